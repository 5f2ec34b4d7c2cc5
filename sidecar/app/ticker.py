"""The loop primitive: ticks on monotonic deadlines, never `sleep(period)` after the work.

Deadlines sit on a fixed grid aligned to whole wall-clock periods (plus a phase: cluster
members take turns within each second), so the cycle starts just after each second turns and
does not drift however long the work takes. A cycle whose work
runs past the next deadline is an overrun: the next cycle starts at once (late, for the most
recent deadline that has passed) and any older missed deadlines are skipped, not queued.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from ..clock import Clock

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Tick:
    """One scheduled cycle: its index and its deadline."""

    index: int
    deadline: float  # monotonic


class Ticker:
    """Yields a Tick at every deadline of a fixed grid.

    :param clock: the injected clock.
    :param period: seconds between deadlines.
    :param on_overrun: called once per overrun (e.g. a metrics counter's `inc`).
    :param phase: seconds after each whole period that the deadlines sit, read again at every
        tick; when it changes, the next deadline moves later (never earlier: no two cycles closer
        than a period).
    """

    def __init__(self, clock: Clock, period: float, *, on_overrun: Callable[[], object] | None = None,
                 phase: Callable[[], float] | None = None) -> None:
        self.clock = clock
        self.period = period
        self._on_overrun = on_overrun
        self.phase = phase
        self.overruns = 0  # cycles whose work ended after the next deadline
        self.skipped = 0  # deadlines dropped because two or more passed during one cycle

    async def __aiter__(self) -> AsyncIterator[Tick]:
        clock, period = self.clock, self.period
        wall_now, mono_now = clock.time(), clock.monotonic()
        phase = self.phase() % period if self.phase is not None else 0.0
        to_next = period - math.fmod(wall_now - phase, period) % period  # first deadline: the next grid point
        deadline = mono_now + to_next
        index = 0
        while True:
            delay = deadline - clock.monotonic()
            if delay > 0:
                await clock.sleep(delay)
            yield Tick(index, deadline)
            index += 1
            deadline += period
            if self.phase is not None and (moved := self.phase() % period) != phase:
                deadline += (moved - phase) % period
                phase = moved
            behind = clock.monotonic() - deadline
            if behind > 0:
                self.overruns += 1
                if self._on_overrun is not None:
                    self._on_overrun()
                missed = int(behind // period)
                self.skipped += missed
                deadline += missed * period

    async def run(self, work: Callable[[], Awaitable[object]]) -> None:
        """Await `work()` at every tick, until cancelled; an exception is logged and costs that
        tick's work only."""
        async for _tick in self:
            try:
                await work()
            except Exception:  # a bug must cost one tick, not every tick after it
                log.exception("work at tick failed")
