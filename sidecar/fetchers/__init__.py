"""Fetchers: one module per data source, each turning a provider's payload into `Bar`s."""

from .base import FetchResult
from .yahoo import YahooFetcher

__all__ = ["FetchResult", "YahooFetcher"]
