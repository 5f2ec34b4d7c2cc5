"""Reference data: what each symbol is (the symbols table) and when it reports (the earnings calendar)."""

from .instruments import TYPES, Instrument, parse_type
from .service import ReferenceData

__all__ = ["TYPES", "Instrument", "ReferenceData", "parse_type"]
