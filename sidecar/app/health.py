"""The /health document: an overall status and one section per component.

`down` when the loop is not cycling or no symbol has fresh data; `degraded` when any
component or symbol is unhealthy; `ok` otherwise.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .daemon import Sidecar


def _age(now: float, t: float | None) -> float | None:
    return None if t is None else round(now - t, 3)


def build_health(app: Sidecar) -> dict[str, object]:
    """Assemble the health document from the components' own state."""
    s, orch, sqlite, metrics = app.settings, app.orchestrator, app.sqlite, app.metrics
    now = app.clock.time()

    cycling = orch.last_cycle_at is not None and now - orch.last_cycle_at <= 3 * s.cycle_interval_s + 1
    loop = {
        "state": "ok" if cycling and not app.stopping else "down",
        "cycles": int(metrics.total("sidecar_cycles_total")),
        "overruns": orch.ticker.overruns,
        "last_cycle_ms": round(orch.last_cycle.duration_s * 1000, 2) if orch.last_cycle else None,
        "last_cycle_age_s": _age(now, orch.last_cycle_at),
    }

    sources: dict[str, object] = {}
    primary_state = "ok"
    for g in orch.sources:
        src = g.state
        if g.fetcher.disabled_reason is not None:
            sources[g.name] = {"state": "disabled", "reason": g.fetcher.disabled_reason}
            continue
        if src.tried_last_cycle == 0:
            src_state = "idle" if g is not orch.guarded else "down"
        elif src.failed_last_cycle == 0:
            src_state = "ok"
        else:
            src_state = "down" if src.failed_last_cycle == src.tried_last_cycle else "degraded"
        breaker, limiter = g.breaker, g.limiter
        if breaker.state == "open":
            src_state = "down"
        if g is orch.guarded:
            primary_state = src_state
        sources[g.name] = {
            "state": src_state,
            "breaker": {"state": breaker.state, "consecutive_failures": breaker.failures,
                        "transitions": breaker.transitions},
            "rate_limit": {"per_minute": limiter.per_minute, "per_day": limiter.per_day,
                           "used_today": limiter.used_today, "refused": limiter.refused,
                           "blocked_for_s": round(max(0.0, limiter.blocked_until - app.clock.monotonic()), 3)},
            "base_url": g.fetcher.base_url,
            "requests_last_cycle": src.tried_last_cycle,
            "failed_last_cycle": src.failed_last_cycle,
            "symbols_served_last_cycle": src.served_last_cycle,
            "last_success_age_s": _age(now, src.last_success_at),
            "last_error": src.last_error,
            "last_error_age_s": _age(now, src.last_error_at),
        }
    errors = metrics.by_labels("sidecar_fetch_errors_total", ("source", "reason"))
    for (name, reason), n in errors.items():
        doc = sources.get(name)
        if isinstance(doc, dict) and "state" in doc and doc["state"] != "disabled":
            doc.setdefault("errors_total", {})[reason] = n

    redis = {
        "state": {True: "ok", False: "down", None: "unknown"}[orch.redis_ok],
        "last_error": orch.redis_last_error,
        "errors_total": int(metrics.total("sidecar_redis_errors_total")),
        "reseeds": app.reseeds,
        "last_reseed_age_s": _age(now, app.reseeded_at),
    }
    sqlite_doc = {
        "state": "ok" if sqlite.last_error is None else "degraded",
        "path": str(sqlite.path),
        "buffered": sqlite.buffered,
        "dropped_total": sqlite.dropped,
        "last_flush_age_s": _age(now, sqlite.last_flush_at),
        "last_flush_rows": sqlite.last_flush_rows,
        "last_error": sqlite.last_error,
        "persisted_through": dict(sqlite.persisted_through),
    }

    freshness: dict[str, object] = {}
    fresh_count = 0
    for sym, st in orch.states.items():
        age = _age(now, st.last_update)
        fresh = age is not None and age <= s.stale_after_s
        fresh_count += fresh
        freshness[sym] = {
            "fresh": fresh,
            "last_bar_ts": st.last_bar_ts,
            "last_update_age_s": age,
            "last_error": st.last_error,
            "source": st.source,
        }

    rejected = metrics.by_label("sidecar_bars_rejected_total", "reason")
    reasons = [why for bad, why in (
        (loop["state"] == "down", "loop: not cycling"),
        (fresh_count < len(orch.states), f"freshness: {len(orch.states) - fresh_count} symbols stale"),
        (primary_state != "ok", f"source {orch.guarded.name}: {primary_state}"),
        (redis["state"] != "ok", f"redis: {orch.redis_last_error or redis['state']}"),
        (sqlite_doc["state"] != "ok", f"sqlite: {sqlite.last_error} ({sqlite.buffered} bars buffered)"),
    ) if bad]
    if loop["state"] == "down" or fresh_count == 0:
        status = "down"
    else:
        status = "degraded" if reasons else "ok"
    return {
        "status": status,
        "reasons": reasons,
        "ready": orch.last_cycle_at is not None,
        "time": now,
        "loop": loop,
        "sources": sources,
        "redis": redis,
        "sqlite": sqlite_doc,
        "validator": {"rejected": rejected},
        "backfill": app.backfiller.summary(),
        "bootstrap": {"running": app.bootstrapper.running,
                      "progress": {sym: {"windows_done": d, "windows": t}
                                   for sym, (d, t) in app.bootstrapper.progress.items()}},
        "end_of_day": app.backfiller.eod,
        "gc": {"threshold": list(gc.get_threshold()), "frozen_objects": gc.get_freeze_count(),
               "collections": [g["collections"] for g in gc.get_stats()]},
        "freshness": freshness,
    }
