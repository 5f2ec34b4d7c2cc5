"""Injected time: the daemon reads both clocks and sleeps only through a Clock, so loops
and timers are testable without real sleeping."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time for timestamps, monotonic time for deadlines, and a sleep on the latter."""

    def time(self) -> float:
        """Seconds since the Unix epoch (UTC)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences are meaningful."""

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller for `seconds` of this clock's monotonic time."""


class SystemClock:
    """The real clocks: `time.time()` and the event loop's monotonic clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A virtual clock for tests: `sleep` advances time at once instead of waiting.

    Wall and monotonic time move together; `advance` moves them without sleeping.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by `seconds`."""
        self._now += seconds
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)  # still yield, so other tasks run as they would
