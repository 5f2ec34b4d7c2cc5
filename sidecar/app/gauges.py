"""The gauges Prometheus reads at each scrape, built from the components' state: each symbol's
newest bar and last update with whether its market is in session (the staleness alerts:
`time() - x > threshold` while in session), each source's last success, and the last
end-of-day check per asset class (the alert an hour after the close)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client.core import GaugeMetricFamily

from ..calendars import is_trading
from ..cycle.table import CLASSES, SymbolTable
from ..metrics import SymbolGauge, gauge
from ..sources import GuardedSource

CLASS_NAMES = [c.value for c in CLASSES]  # an enum's .value is a descriptor call: 30,000 a scrape cost 85 ms


def loop_gauges(t: SymbolTable, sources: Sequence[GuardedSource], now: float) -> list[GaugeMetricFamily]:
    """Per symbol and per source, from the table's arrays."""
    slots = t.slots()
    classes = t.asset_class[slots]
    in_session = np.zeros(len(slots))
    for code in np.unique(classes).tolist():
        in_session[classes == code] = float(is_trading(CLASSES[code], int(now) // 60 * 60)[0])
    labels = [f'symbol="{t.symbols[s]}",asset_class="{CLASS_NAMES[c]}"'
              for s, c in zip(slots.tolist(), classes.tolist(), strict=True)]
    last_bar, updated = t.lt_ts[slots], t.last_update[slots]
    has_bar, was_updated = np.flatnonzero(last_bar >= 0).tolist(), np.flatnonzero(updated == updated).tolist()
    return [
        SymbolGauge("sidecar_symbol_last_bar_timestamp_seconds", "Open of the symbol's newest bar",
                    [labels[i] for i in has_bar], last_bar[has_bar].astype(np.float64).tolist()),
        SymbolGauge("sidecar_symbol_last_update_timestamp_seconds", "When the symbol's bars last changed",
                    [labels[i] for i in was_updated], updated[was_updated].tolist()),  # NaN: never
        SymbolGauge("sidecar_symbol_in_session", "1 while the symbol's market is open (by its calendar)", labels,
                    in_session.tolist()),
        gauge("sidecar_source_last_success_timestamp_seconds", "When a request to the source last succeeded",
              ["source"], (([g.name], g.state.last_success_at) for g in sources
                           if g.state.last_success_at is not None)),
    ]


def end_of_day_gauges(eod: dict[str, object], classes: dict[str, str]) -> list[GaugeMetricFamily]:
    """The last end-of-day check (`Backfiller.eod`) per asset class: the share of symbols
    complete and the end of the session checked (`classes`: symbol -> asset class)."""
    sessions: dict[str, list[int]] = eod.get("sessions") or {}  # type: ignore[assignment]
    missing: dict[str, int] = eod.get("missing_minutes") or {}  # type: ignore[assignment]
    done: dict[str, list[int]] = {}  # asset class -> [complete, symbols, latest session end]
    for symbol, (_, end) in sessions.items():
        row = done.setdefault(classes.get(symbol, "other"), [0, 0, 0])
        row[0] += not missing.get(symbol)
        row[1] += 1
        row[2] = max(row[2], end)
    return [
        gauge("sidecar_end_of_day_complete_ratio", "Share of symbols complete at the last end-of-day check",
              ["asset_class"], (([c], r[0] / r[1]) for c, r in done.items())),
        gauge("sidecar_end_of_day_session_end_timestamp_seconds", "End of the session the last check covered",
              ["asset_class"], (([c], float(r[2])) for c, r in done.items())),
    ]
