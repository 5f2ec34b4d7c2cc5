"""Fetchers: one module per data source, each turning a provider's payload into `Bar`s."""

from .base import FetchResult, QuoteBatch
from .yahoo import YahooFetcher

__all__ = ["FetchResult", "QuoteBatch", "YahooFetcher"]
