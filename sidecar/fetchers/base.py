"""What every fetcher returns, and the JSON decoding they share."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import orjson

from ..bars import Bar
from ..errors import MalformedResponse


@dataclass(slots=True)
class FetchResult:
    """The bars one request returned for one symbol, oldest first; the forming bar is flagged."""

    symbol: str
    source: str
    bars: list[Bar] = field(default_factory=list)
    ignored: int = 0  # provider rows that are not bars of the session (e.g. Yahoo's close print)


@dataclass(slots=True)
class QuoteBatch:
    """Quote snapshots from one batch request: parallel arrays; `index` points into the list of
    symbols asked for (a symbol the source left out has no row)."""

    source: str
    index: np.ndarray  # int64
    price: np.ndarray  # last trade price
    time: np.ndarray  # int64 unix second of the last trade
    day_volume: np.ndarray  # volume traded so far in the symbol's day

    def __len__(self) -> int:
        return len(self.index)


def decode_json(body: bytes, source: str, symbol: str) -> object:
    """Parse a JSON body with orjson; fall back to the stdlib for bare NaN/Infinity tokens,
    so one bad value costs one bar (rejected by the validator), not the whole response."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedResponse(source, symbol, f"body is not JSON: {exc}") from None


def to_float(value: object) -> float:
    """A provider's number as a float; anything that is not a number becomes NaN."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)  # type: ignore[arg-type]  # providers that send "291.3500"
    except (TypeError, ValueError):
        return math.nan
