"""Fetchers: one module per data source, each turning a provider's payload into `Bar`s."""

from .alphavantage import AlphaVantageFetcher
from .base import FetchResult, HttpFetcher, QuoteBatch
from .polygon import PolygonFetcher
from .twelvedata import TwelveDataFetcher
from .yahoo import YahooFetcher

__all__ = ["AlphaVantageFetcher", "FetchResult", "HttpFetcher", "PolygonFetcher", "QuoteBatch", "TwelveDataFetcher",
           "YahooFetcher"]
