"""Corporate actions: the dividends and splits a source reports with its history (Yahoo's
chart `events`, providers.md 8.2), stored beside the bars, and the adjusted view built from
them.

Bars are stored as traded. The adjusted view multiplies each bar's prices by the product,
over every action after the bar, of 1 / split ratio (a 4:1 split: 0.25) and, for a
dividend, 1 - amount / the close of the last bar before its ex-date: the multiplicative
back-adjustment Yahoo's `adjclose` and CRSP use. Volume is multiplied by the split ratios
only. An export adjusts as of its end: re-exporting the same period later gives the same
numbers, and its last bar's adjusted price is its traded one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the fetchers import this module, the store imports theirs
    from .stores import DurableStore
    from .stores.readonly import Database

DIVIDEND, SPLIT = "dividend", "split"

SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (
    symbol TEXT NOT NULL,
    ts INTEGER NOT NULL,     -- the ex-date, as the source stamps it (Yahoo: that session's open)
    kind TEXT NOT NULL,      -- dividend | split
    value REAL NOT NULL,     -- dividend: amount per share; split: new shares per old share
    source TEXT NOT NULL,
    PRIMARY KEY (symbol, ts, kind)
) WITHOUT ROWID;
"""
_UPSERT = ("INSERT INTO actions VALUES (?, ?, ?, ?, ?) ON CONFLICT (symbol, ts, kind) "
           "DO UPDATE SET value = excluded.value, source = excluded.source")

Action = tuple[int, str, float]
"""(ex-date, kind, value)."""


def parse_yahoo_events(events: object) -> tuple[list[Action], int]:
    """Yahoo's chart `events` as actions, and how many entries were malformed (skipped): a
    dividend needs an integer date and a positive amount, a split positive numerator and
    denominator."""
    out: list[Action] = []
    bad = 0
    groups = events if isinstance(events, dict) else {}
    for kind, key in ((DIVIDEND, "dividends"), (SPLIT, "splits")):
        entries = groups.get(key)
        for entry in (entries.values() if isinstance(entries, dict) else []):
            try:
                when = entry["date"]
                value = (float(entry["amount"]) if kind == DIVIDEND
                         else float(entry["numerator"]) / float(entry["denominator"]))
                if not isinstance(when, int) or isinstance(when, bool) or not (math.isfinite(value) and value > 0):
                    raise ValueError(when)
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                bad += 1
                continue
            out.append((when, kind, value))
    return sorted(out), bad


async def store(sqlite: DurableStore, symbol: str, source: str, actions: Sequence[Action]) -> None:
    """Record a symbol's actions (a later report of the same one replaces it); the table
    exists (`SCHEMA`, created by whoever loads history)."""
    if actions:
        await sqlite.execute(_UPSERT, [(symbol, t, k, v, source) for t, k, v in actions])


def load(db: Database, symbols: Sequence[str], end: int) -> dict[str, list[Action]]:
    """The stored actions dated before `end` of some symbols (none for a database without the
    table), from the SQLite file or the PostgreSQL store."""
    from .stores import readonly  # here: the stores import the fetchers, which import this module

    out: dict[str, list[Action]] = {s: [] for s in symbols}
    rows = readonly.rows(db, f"SELECT symbol, ts, kind, value FROM actions WHERE ts < ? AND symbol IN "
                             f"({','.join('?' * len(symbols))}) ORDER BY symbol, ts", [end, *symbols], "actions")
    for symbol, ts, kind, value in rows or []:
        out[symbol].append((int(ts), str(kind), float(value)))
    return out


def factors(ts: np.ndarray, close: np.ndarray, actions: Sequence[Action]) -> tuple[np.ndarray, np.ndarray]:
    """One symbol's bars (ascending opens, traded closes): each bar's price factor and volume
    factor under `actions`. A dividend whose ex-date no bar precedes changes no bar."""
    price, volume = np.ones(len(ts)), np.ones(len(ts))
    for when, kind, value in actions:
        before = int(np.searchsorted(ts, when))  # bars [0, before) open before the ex-date
        if not before:
            continue
        if kind == SPLIT:
            price[:before] /= value
            volume[:before] *= value
        else:
            price[:before] *= 1.0 - value / close[before - 1]
    return price, volume
