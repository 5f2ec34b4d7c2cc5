"""Shared fixtures: a real redis-server per test session (private unix socket), the local
exchange served over loopback HTTP, and settings that point the daemon at both."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis

from sidecar.exchange import Exchange, Market
from sidecar.settings import Settings

SEED = 7
ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**overrides: str) -> dict[str, str]:
    """The environment for a daemon subprocess: this checkout importable, no stray SIDECAR_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@dataclass
class RedisServer:
    """A redis-server this test session started."""

    socket: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket))


def start_redis(directory: Path) -> RedisServer:
    """Start redis-server on a unix socket in `directory` (no TCP port) and wait for PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: `make test` installs it (apt-get install redis-server)")
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700", "--save", "",
         "--appendonly", "no", "--dir", str(directory), "--logfile", str(directory / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = RedisServer(sock, proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with server.client() as c:
                if c.ping():
                    return server
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"redis-server did not answer on {sock}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    with redis_server.client() as c:
        c.flushall()
    return redis_server.url


@pytest.fixture
async def exchange() -> AsyncIterator[Exchange]:
    """The local exchange, open around the clock, listening on a free loopback port."""
    ex = Exchange(Market(SEED, always_open=True), slow_s=2.0)
    await ex.start("127.0.0.1", 0)
    yield ex
    await ex.close()


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, exchange: Exchange) -> Settings:
    """Settings for an in-process daemon against this test's Redis, SQLite file and exchange."""
    return replace(
        Settings(),
        redis_url=redis_url,
        yahoo_base_url=exchange.url,
        db_path=tmp_path / "sidecar.db",
        http_port=0,
        lookback_minutes=30,
        flush_interval_s=3600.0,
        shutdown_timeout_s=5.0,
        bootstrap_days=0.0,  # tests that need history bootstrap it themselves
        gap_scan_days=0.0,  # likewise gap scans and end-of-day checks
    )
