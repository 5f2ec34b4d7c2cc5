"""The stop's deadline: the daemon's `close()` runs its steps in order, each within what is
left of SIDECAR_SHUTDOWN_TIMEOUT_S, so that a component that never returns (a connection
that waits on a peer forever, a task that ignores its cancellation) cannot hold the process
until PM2's kill_timeout SIGKILLs it with the later steps not run. A step that overruns is
cancelled and named in the log, with where every task still running is waiting, and the next
step runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
FLOOR = 0.1
"""The share of the budget a step gets even when the steps before it used up the rest: the
flush and the stores' closing still deserve a try."""


def waiting_at(task: asyncio.Task[Any], depth: int = 12) -> str:
    """Where a task is suspended: its chain of awaits, outermost first, as `function (file:line)`."""
    parts: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and len(parts) < depth:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        parts.append(f"{frame.f_code.co_name} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " > ".join(parts) or repr(task)


def running_tasks() -> str:
    """Every other task of the loop with where it waits, one per line."""
    me = asyncio.current_task()
    return "\n".join(f"  {t.get_name()}: {waiting_at(t)}" for t in asyncio.all_tasks() if t is not me and not t.done())


class Shutdown:
    """The steps of one stop, against one deadline on the event loop's clock (asyncio's
    timeouts run on it, whatever clock the daemon's loop is given).

    :param budget_s: the whole stop's time, SIDECAR_SHUTDOWN_TIMEOUT_S.
    """

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.end = asyncio.get_running_loop().time() + budget_s
        self.overran: list[str] = []  # the steps given up on, for the exit's last word

    def left(self, share: float = 1.0) -> float:
        """Seconds for the next step: what is left of the budget, at most `share` of it, at least FLOOR of it."""
        now = asyncio.get_running_loop().time()
        return max(min(self.end - now, share * self.budget_s), FLOOR * self.budget_s)

    async def step(self, name: str, work: Awaitable[Any]) -> None:
        """Await `work` within `left()` seconds; past that, cancel it and log what still runs."""
        limit = self.left()
        try:
            async with asyncio.timeout(limit) as scope:
                await work
        except TimeoutError:
            if not scope.expired():
                raise  # the step's own timeout, not this deadline's: its error to report
            self.overran.append(name)
            log.error("shutdown: %s still running after %.1fs; given up. Tasks still running:\n%s",
                      name, limit, running_tasks())

    async def cancel(self, tasks: Iterable[asyncio.Task[Any]], share: float) -> None:
        """Cancel background tasks and wait for them to finish, within `left(share)`; name any
        that ignore their cancellation, with where they wait."""
        tasks = [t for t in tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        limit = self.left(share)
        _done, pending = await asyncio.wait(tasks, timeout=limit)
        for task in pending:
            self.overran.append(f"task {task.get_name()}")
            log.error("shutdown: task %s still running %.1fs after it was cancelled, at %s", task.get_name(), limit,
                      waiting_at(task))
