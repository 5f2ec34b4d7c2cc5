"""The status page: `GET /` (and `/status`) serves one self-contained HTML page (CSS, JavaScript
and SVG inline, nothing fetched from elsewhere), which polls `GET /status.json` every two
seconds and redraws without reloading.

The JSON is compact for thousands of symbols: the freshness grid is columns (symbols, asset
class codes, a state code, the newest bar's age), universes are lists of indexes into them,
and the cycle-time chart is the last ten minutes of cycles from a ring kept by the loop
(`CycleHistory`), with p50/p99 over the same window and per stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cycle.table import CLASSES, SymbolTable

PAGE = (Path(__file__).parent / "status.html").read_bytes()
FRESH, STALE, DEAD, WAITING = 0, 1, 2, 3  # a symbol's state on the grid
STATES = ("fresh", "stale", "dead-lettered", "waiting")


class CycleHistory:
    """The last `size` cycles: when each ran, its duration and its stage times (a ring).

    :param size: cycles kept (600: ten minutes at 1 Hz).
    """

    def __init__(self, size: int = 600) -> None:
        self.size = size
        self.at = np.full(size, np.nan)
        self.seconds = np.full(size, np.nan)
        self.stages: dict[str, np.ndarray] = {}
        self.count = 0

    def add(self, at: float, seconds: float, stages: Mapping[str, float]) -> None:
        """Record one cycle."""
        i = self.count % self.size
        self.at[i], self.seconds[i] = at, seconds
        for name, value in stages.items():
            ring = self.stages.get(name)
            if ring is None:
                ring = self.stages[name] = np.full(self.size, np.nan)
            ring[i] = value
        self.count += 1

    def snapshot(self, since: float) -> dict[str, Any]:
        """The cycles that ran after `since`, oldest first, in ms; p50/p99 of them, overall and per stage."""
        order = np.roll(np.arange(self.size), -(self.count % self.size))
        keep = order[(self.at[order] >= since)]
        ms = self.seconds[keep] * 1000

        def pct(x: np.ndarray, q: float) -> float | None:
            x = x[~np.isnan(x)]
            return round(float(np.percentile(x, q)), 2) if len(x) else None

        return {"t": np.round(self.at[keep], 1).tolist(), "ms": np.round(ms, 2).tolist(),
                "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "cycles": int(len(keep)),
                "stages": {name: {"p50_ms": pct(r[keep] * 1000, 50), "p99_ms": pct(r[keep] * 1000, 99)}
                           for name, r in self.stages.items()}}


def grid(t: SymbolTable, now: float, stale_after_s: float,
         universes: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Every symbol's state as columns: fresh (updated within `stale_after_s`), stale,
    dead-lettered (every source failing), or waiting (no bar yet); with the newest bar's age."""
    slots = t.slots()
    age = now - t.last_update[slots]
    state = np.where(age <= stale_after_s, FRESH, STALE)
    state[np.isnan(t.last_update[slots])] = WAITING
    state[~np.isnan(t.dead_since[slots])] = DEAD
    bar_age = np.where(t.lt_ts[slots] >= 0, now - t.lt_ts[slots], np.nan)
    listed = slots.tolist()
    symbols = [t.symbols[s] for s in listed]
    index = {s: k for k, s in enumerate(symbols)}
    active = set(listed)
    return {"symbols": symbols, "class": t.asset_class[slots].tolist(), "classes": [c.value for c in CLASSES],
            "state": state.tolist(), "states": list(STATES),
            "bar_age_s": [None if a != a else round(a, 1) for a in bar_age.tolist()],
            "error": {t.symbols[s]: e for s, e in t.last_error.items() if s in active},
            "universes": {name: [index[m] for m in members if m in index] for name, members in universes.items()},
            "counts": {STATES[k]: int((state == k).sum()) for k in range(len(STATES))}}


def document(health: dict[str, Any], history: CycleHistory, table_grid: dict[str, Any], now: float,
             signals: list[dict[str, Any]]) -> dict[str, Any]:
    """What the page shows, from the health document (without its per-symbol freshness map,
    which the grid replaces), the cycle history of the last ten minutes, and the newest signals."""
    loop = {k: v for k, v in health.get("loop", {}).items() if k != "freshness"}
    sources = {name: {"state": s.get("state"), "breaker": (s.get("breaker") or {}).get("state"),
                      "rate_limit": s.get("rate_limit"), "last_error": s.get("last_error"),
                      "last_success_age_s": s.get("last_success_age_s"), "reason": s.get("reason")}
               for name, s in (health.get("sources") or {}).items()}
    boot = health.get("bootstrap") or {}
    windows = list((boot.get("progress") or {}).values())
    return {"now": now, "status": health.get("status"), "reasons": health.get("reasons", []),
            "loop": loop, "cycles": history.snapshot(now - 600), "sources": sources,
            "redis": health.get("redis"), "sqlite": _without(health.get("sqlite"), "persisted_through"),
            "progress": {"bootstrap": {"running": boot.get("running", False),
                                       "windows_done": sum(w["windows_done"] for w in windows),
                                       "windows": sum(w["windows"] for w in windows)},
                         "backfill": _without(health.get("backfill"), "gaps")},
            "end_of_day": _without(health.get("end_of_day"), "sessions"), "grid": table_grid, "signals": signals}


def _without(section: dict[str, Any] | None, key: str) -> dict[str, Any]:
    """A health section without its per-symbol part (thousands of rows at 5,000 symbols)."""
    return {k: v for k, v in (section or {}).items() if k != key}
