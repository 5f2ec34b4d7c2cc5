"""What `sidecar.client`'s reads return, and the errors they raise: plain values a strategy
holds on to (imported from `sidecar.client`, which re-exports them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import SidecarError


class ClientError(SidecarError):
    """A read the client could not answer (with the symbol it was about, when there is one)."""

    def __init__(self, message: str, symbol: str = "") -> None:
        super().__init__(f"{symbol}: {message}" if symbol else message)
        self.symbol = symbol


class StaleError(ClientError):
    """A value older than the caller allows (raised with `fresh_only=True`)."""


@dataclass(frozen=True, slots=True)
class Features:
    """A symbol's newest indicator values on one timeframe."""

    symbol: str
    timeframe: str
    ts: int  # open of the bar they belong to
    close: float
    provisional: bool  # computed for the forming bar
    updated: float  # wall time written
    values: dict[str, float | None]  # by output name, None while warming up
    stale: bool = False  # older than max_age_s, or the daemon's heartbeat is missing

    def __getitem__(self, name: str) -> float | None:
        return self.values[name]


@dataclass(slots=True)
class FeatureTable:
    """Many symbols' newest features as columns (what a strategy over a universe wants)."""

    symbols: list[str]
    timeframe: str
    outputs: tuple[str, ...]
    present: np.ndarray  # bool: the symbol has features in Redis
    ts: np.ndarray  # int64 open of the bar they belong to (-1: absent)
    close: np.ndarray
    provisional: np.ndarray
    updated: np.ndarray  # wall time written (NaN: absent)
    values: np.ndarray  # (outputs, symbols), NaN while warming up or absent
    stale: np.ndarray  # bool: absent, older than max_age_s, or the heartbeat is missing

    def row(self, k: int) -> Features:
        """Symbol k's values as a Features object."""
        vals = self.values[:, k].tolist()
        return Features(self.symbols[k], self.timeframe, int(self.ts[k]), float(self.close[k]),
                        bool(self.provisional[k]), float(self.updated[k]),
                        {n: None if v != v else v for n, v in zip(self.outputs, vals, strict=True)},
                        bool(self.stale[k]))

    def to_pandas(self) -> Any:
        """A DataFrame indexed by symbol: ts, close, provisional, updated, stale, then the outputs."""
        import pandas as pd

        frame = pd.DataFrame({"ts": self.ts, "close": self.close, "provisional": self.provisional,
                              "updated": self.updated, "stale": self.stale}, index=pd.Index(self.symbols, name="symbol"))
        return frame.join(pd.DataFrame(self.values.T, columns=list(self.outputs), index=frame.index))


@dataclass(frozen=True, slots=True)
class Message:
    """One entry of the signals stream: a signal or an event."""

    id: str  # the stream id, what `ack` takes
    kind: str  # "signal" or "event"
    body: dict[str, Any] = field(default_factory=dict)
