"""Stale bars and dead letters: what the cycle says about symbols whose sources went quiet.

A symbol not refreshed for `stale_after_s` has its newest bar rewritten once with the STALE
flag (the last good value, marked), until its source answers again: with a newer bar, or with
nothing newer (a minute without trades), when the same bar is rewritten without the flag. A
symbol whose every source is failing past `stale_after_s` goes on the dead-letter hash with
the reasons, until a source answers again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..bars import STALE
from ..errors import RedisStoreError
from ..stores import RedisStore
from .table import SymbolTable

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Staleness:
    """A cycle's changes to the STALE flags of the newest bars, by slot: `marked` went silent
    (their features go), `cleared` answered again with nothing newer. Both bars are written again."""

    marked: np.ndarray
    cleared: np.ndarray

    def rewrite(self) -> np.ndarray:
        """The slots whose newest bars are written again."""
        return np.concatenate([self.marked, self.cleared])


class DeadLetters:
    """Marks stale bars and keeps the dead-letter hash.

    :param table: the symbol table.
    :param redis: where the dead-letter hash lives.
    :param stale_after_s: silence after which a symbol is stale.
    :param started_at: wall time the loop started (a symbol never answered is silent since).
    """

    def __init__(self, *, table: SymbolTable, redis: RedisStore, stale_after_s: float, started_at: float) -> None:
        self.table = table
        self.redis = redis
        self.stale_after_s = stale_after_s
        self.started_at = started_at

    def silent(self, now: float) -> np.ndarray:
        """Per slot: not refreshed for more than `stale_after_s` (free slots included)."""
        t = self.table
        since = np.where(np.isnan(t.last_update), self.started_at, t.last_update)
        return now - since > self.stale_after_s

    def mark_stale(self, now: float, answered: np.ndarray) -> Staleness:
        """Flag the newest bar of every newly silent symbol STALE, and take the flag off where
        the source answered (`answered`, slots) with nothing newer: a symbol back from an
        outage in a minute without trades has no new bar to carry a fresh flag, and would stay
        STALE until its next trade (a test failed in CI so). A symbol that answered this cycle
        is never silent, however long the cycle's requests took."""
        t = self.table
        heard = np.zeros(len(t.active), dtype=bool)
        heard[answered] = True
        flagged = (t.lt_flags & STALE) != 0
        marked = np.flatnonzero(t.active & (t.lt_ts >= 0) & ~flagged & ~heard & self.silent(now))
        cleared = np.flatnonzero(heard & flagged)
        t.lt_flags[marked] |= STALE
        t.lt_flags[cleared] &= ~STALE
        return Staleness(marked, cleared)

    async def update(self, now: float) -> None:
        """Put symbols whose every source fails past `stale_after_s` on the hash, with the
        reasons; take those whose source answers again off it."""
        t = self.table
        silent = self.silent(now)
        failing = np.zeros(len(t.active), dtype=bool)
        failing[list(t.last_error)] = True
        failing &= silent & t.active
        listed = ~np.isnan(t.dead_since)
        add_slots = np.flatnonzero(failing & ~listed).tolist()
        off = np.flatnonzero(listed & ~failing)
        if not add_slots and not len(off):
            return
        since = np.where(np.isnan(t.last_update), self.started_at, t.last_update)
        add = {t.symbols[s]: {"reason": "every source failing", "error": t.last_error[s], "since": float(since[s]),
                              "sources": [g.name for g in t.sources[s]], "errors": dict(t.errors.get(s, {}))}
               for s in add_slots}
        remove = [t.symbols[s] for s in off.tolist() if t.active[s]]
        t.dead_since[add_slots] = now
        t.dead_since[off] = np.nan
        try:
            await self.redis.dead_letters(add, remove)
        except RedisStoreError as exc:
            log.warning("%s", exc)
            t.dead_since[add_slots] = np.nan  # try again next cycle
