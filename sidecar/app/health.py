"""The /health document: an overall status and one section per component, composed from the
components' own `health()` snapshots (nothing here reads another object's attributes).

`down` when the loop is not cycling or no symbol has fresh data; `degraded` when any
component or symbol is unhealthy; `ok` otherwise.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from typing import Any


def compose(*, now: float, loop: Mapping[str, Any], sources: Mapping[str, Mapping[str, Any]], primary: str,
            redis: Mapping[str, Any], sqlite: Mapping[str, Any], sections: Mapping[str, Any]) -> dict[str, Any]:
    """The document from the snapshots: `loop` is the orchestrator's (with `freshness`), `sources`
    each source's by name, `primary` the name of the source the loop relies on first, `sections`
    further parts shown as they are (validator, backfill, bootstrap, ...)."""
    loop = dict(loop)
    freshness = loop.pop("freshness")
    docs = {name: dict(doc) for name, doc in sources.items()}
    if docs.get(primary, {}).get("state") == "idle":
        docs[primary]["state"] = "down"  # the primary not asked at all is not idle but broken
    primary_state = docs.get(primary, {}).get("state", "down")
    stale = loop["symbols"] - loop["fresh_symbols"]
    reasons = [why for bad, why in (
        (loop["state"] == "down", "loop: not cycling"),
        (stale > 0, f"freshness: {stale} symbols stale"),
        (primary_state != "ok", f"source {primary}: {primary_state}"),
        (redis["state"] != "ok", f"redis: {redis.get('last_error') or redis['state']}"),
        (sqlite["state"] != "ok", f"sqlite: {sqlite.get('last_error')} ({sqlite.get('buffered')} bars buffered)"),
    ) if bad]
    if loop["state"] == "down" or loop["fresh_symbols"] == 0:
        status = "down"
    else:
        status = "degraded" if reasons else "ok"
    return {
        "status": status,
        "reasons": reasons,
        "ready": loop["last_cycle_age_s"] is not None,
        "time": now,
        "loop": loop,
        "sources": docs,
        "redis": dict(redis),
        "sqlite": dict(sqlite),
        **sections,
        "gc": {"threshold": list(gc.get_threshold()), "frozen_objects": gc.get_freeze_count(),
               "collections": [g["collections"] for g in gc.get_stats()]},
        "freshness": freshness,
    }
