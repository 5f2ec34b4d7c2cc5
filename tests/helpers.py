"""Helpers every test may use: waiting on a condition with a deadline (never a fixed sleep), a
free loopback port, and the daemon as a subprocess with its log kept for failure messages."""

from __future__ import annotations

import asyncio
import inspect
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from .conftest import subprocess_env


async def wait_until(predicate: Callable[[], object | Awaitable[object]], timeout: float, what: str,
                     every: float = 0.05, detail: Callable[[], str] | None = None) -> float:
    """Poll `predicate` (sync or async) until it is truthy; return the seconds it took. Fails
    naming `what` (and `detail()`, e.g. a log) once `timeout` has passed."""
    t0 = time.monotonic()
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not reached within {timeout}s" + (f"\n{detail()}" if detail else ""))
        await asyncio.sleep(every)


def reached(exchange: Any, symbol: str, last_ts: int | None, minute: int) -> bool:
    """Whether a symbol's newest bar is of `minute` or later, or, the market having had no
    trade in `minute` (a quiet minute never gets a bar), of the minute before or later."""
    from sidecar.symbols import lookup

    last = last_ts or 0
    return last >= minute or (last >= minute - 60 and not exchange.traded(lookup(symbol).yahoo, minute))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stored_bars(db: Path, timeframe: str = "1m") -> dict[tuple[str, int], tuple]:
    """(symbol, ts) -> (open, high, low, close, volume) of every bar in a SQLite file."""
    if not db.exists():
        return {}
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT symbol, ts, open, high, low, close, volume FROM bars WHERE timeframe = ?",
                            (timeframe,)).fetchall()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


@dataclass
class Durable:
    """Where a test's daemons keep the durable record (a SQLite file, or a PostgreSQL database
    when `url` is set), and the test's own reading of it, independent of the daemon's store."""

    db: Path
    url: str = ""

    def env(self) -> dict[str, str]:
        """The daemon's settings that select this store."""
        return {"SIDECAR_STORE_URL": self.url} if self.url else {"SIDECAR_DB_PATH": str(self.db)}

    async def rows(self, timeframe: str = "1m") -> dict[tuple[str, int], tuple]:
        """(symbol, ts) -> (open, high, low, close, volume) of every stored bar of a timeframe."""
        if not self.url:
            return stored_bars(self.db, timeframe)
        conn = await asyncpg.connect(self.url)
        try:
            rows = await conn.fetch("SELECT symbol, ts, open, high, low, close, volume FROM bars WHERE timeframe = $1",
                                    timeframe)
        except asyncpg.UndefinedTableError:
            return {}
        finally:
            await conn.close()
        return {(r[0], r[1]): tuple(r[2:]) for r in rows}

    async def duplicates(self) -> int:
        """Rows beyond one per (symbol, timeframe, ts): the primary key allows none."""
        if not self.url:
            with closing(sqlite3.connect(self.db)) as conn:
                return int(conn.execute("SELECT count(*) - count(DISTINCT symbol || timeframe || ts) FROM bars")
                           .fetchone()[0])
        conn = await asyncpg.connect(self.url)
        try:
            return int(await conn.fetchval("SELECT count(*) - count(DISTINCT (symbol, timeframe, ts)) FROM bars"))
        finally:
            await conn.close()


class DaemonProcess:
    """`python -m sidecar run` as a subprocess, its output in a log file, reached over HTTP."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.base = f"http://127.0.0.1:{port}"

    @classmethod
    async def start(cls, directory: Path, **env: str) -> DaemonProcess:
        """Start a daemon in `directory` with these SIDECAR_* settings (HTTP port chosen here)."""
        port = free_port()
        log = directory / f"daemon-{port}.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-u", "-m", "sidecar", "run", cwd=directory, stdout=out,
                stderr=asyncio.subprocess.STDOUT, env=subprocess_env(SIDECAR_HTTP_PORT=str(port), **env))
        return cls(proc, port, log)

    def text(self) -> str:
        """What the daemon printed so far."""
        return self.log.read_text(errors="replace")

    async def get(self, path: str, timeout: float = 10) -> tuple[int, object]:
        """GET a path: (status, JSON document or text)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
                s.get(self.base + path) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else await r.text())

    async def health(self) -> dict:
        """The /health document ({} while the daemon does not answer)."""
        try:
            _, doc = await self.get("/health", timeout=5)
        except (aiohttp.ClientError, TimeoutError):
            return {}
        return doc if isinstance(doc, dict) else {}

    async def wait_ready(self, timeout: float = 60) -> dict:
        """Wait until the daemon has run a cycle; its health document then."""
        doc: dict = {}

        async def ready() -> bool:
            nonlocal doc
            assert self.proc.returncode is None, f"daemon exited with {self.proc.returncode}:\n{self.text()}"
            doc = await self.health()
            return bool(doc.get("ready"))

        await wait_until(ready, timeout, "daemon ready", every=0.2, detail=self.text)
        return doc

    async def stop(self, sig: int = 15, timeout: float = 30) -> int:
        """Signal the daemon (SIGTERM by default) and wait for its exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"daemon still running {timeout}s after signal {sig}:\n{self.text()[-3000:]}") from None

    async def kill(self) -> None:
        """SIGKILL, if it still runs."""
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


async def resumed_daemon(settings: Any, clock: Any) -> Any:
    """An in-process daemon on `clock` with its stores and fetchers open and its state resumed
    from SQLite, but no loop or background task: the test runs the cycles itself."""
    from sidecar.app import Sidecar

    sc = Sidecar(settings, clock=clock, handle_signals=False)
    await sc.sqlite.start()
    await sc.redis.start()
    for fetcher in (sc.fetcher, *sc.fallbacks):
        await fetcher.start()
    await sc.resume()
    return sc
