"""The loop keeps its cadence on deadlines and counts overruns."""

from __future__ import annotations

import itertools
import time

from sidecar.app.ticker import Ticker
from sidecar.clock import ManualClock, SystemClock


async def _run(ticker: Ticker, clock, cycles: int, work: float) -> list[float]:  # type: ignore[no-untyped-def]
    starts = []
    async for tick in ticker:
        starts.append(clock.time())
        await clock.sleep(work)  # the cycle's work
        if tick.index + 1 == cycles:
            break
    return starts


async def test_300ms_of_work_keeps_a_one_second_cadence_without_drift() -> None:
    clock = ManualClock(start=1_700_000_000.25)
    ticker = Ticker(clock, 1.0)
    starts = await _run(ticker, clock, 10, work=0.3)
    assert starts == [1_700_000_001.0 + k for k in range(10)]  # whole seconds, no drift at all
    assert ticker.overruns == 0


async def test_work_longer_than_the_period_counts_overruns() -> None:
    clock = ManualClock(start=1_700_000_000.0)
    counted = []
    ticker = Ticker(clock, 1.0, on_overrun=lambda: counted.append(1))
    starts = await _run(ticker, clock, 5, work=1.3)
    assert ticker.overruns == 4 and len(counted) == 4  # every cycle but the last ran past the next deadline
    # Late cycles start at once for the latest missed deadline; older ones are skipped, not queued.
    assert [round(s - starts[0], 6) for s in starts] == [0.0, 1.3, 2.6, 3.9, 5.2]
    assert ticker.skipped == 1


async def test_real_time_cadence_does_not_accumulate_drift() -> None:
    clock = SystemClock()
    period, work = 0.2, 0.06
    starts = await _run(Ticker(clock, period), clock, 10, work=work)
    offsets = [s % period for s in starts]
    # every start is just after a grid point, and the 10th is not later than the 1st
    assert all(min(o, period - o) < 0.05 for o in offsets), offsets
    assert abs((starts[-1] - starts[0]) - 9 * period) < 0.05
    assert time.time() - starts[-1] >= work


async def test_a_phase_places_the_deadlines_and_a_change_of_it_only_delays_the_next() -> None:
    clock = ManualClock(start=1_700_000_000.25)
    phase = [0.5]
    starts = []
    async for tick in Ticker(clock, 1.0, phase=lambda: phase[0]):
        starts.append(clock.time() - 1_700_000_000)
        if tick.index == 2:
            phase[0] = 0.0  # another member left: this one moves to the front of the second
        if tick.index == 5:
            phase[0] = 0.75  # two joined
        await clock.sleep(0.1)
        if tick.index == 7:
            break
    assert starts == [0.5, 1.5, 2.5, 4.0, 5.0, 6.0, 7.75, 8.75]
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 1.0  # never two cycles within a period
