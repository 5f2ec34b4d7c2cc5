"""The local exchange: a deterministic market simulator served over HTTP in the providers'
own formats, with fault injection and a ground-truth record of every bar it served."""

from .market import Market, MinuteBars
from .server import Exchange

__all__ = ["Exchange", "Market", "MinuteBars"]
