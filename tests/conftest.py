"""Shared fixtures: a real redis-server per test session (private unix socket), a real
PostgreSQL server when a test asks for one (private directory, private loopback port), the
local exchange served over loopback HTTP, and settings that point the daemon at them."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from sidecar.exchange import Exchange, Market
from sidecar.settings import Settings

if TYPE_CHECKING:
    from .helpers import Durable

SEED = 7
ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**overrides: str) -> dict[str, str]:
    """The environment for a daemon subprocess: this checkout importable, no stray SIDECAR_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def poll_until(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.1,
               detail: Callable[[], str] | None = None) -> float:
    """The blocking twin of `helpers.wait_until`, for fixtures and synchronous tests: poll
    `predicate` until it is truthy and return the seconds it took; fail naming `what` (and
    `detail()`) once `timeout` has passed."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not reached within {timeout}s" + (f"\n{detail()}" if detail else ""))
        time.sleep(every)
    return time.monotonic() - t0


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


@dataclass
class RedisClusterServers:
    """A 6-node Redis Cluster (3 masters, 3 replicas) on loopback ports, made with
    `redis-cli --cluster create`, as a test session's."""

    directory: Path
    ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
             "--save", "", "--appendonly", "no", "--dir", str(node_dir), "--logfile", str(node_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers(self, port: int) -> bool:
        """Whether a node answers PING."""
        try:
            with self.node(port) as c:
                return bool(c.ping())
        except redis.ConnectionError:
            return False

    def masters(self) -> dict[int, tuple[int, int]]:
        """Live masters: port -> the first slot range it serves."""
        for port in self.ports:
            if self.processes[port].poll() is None:
                with self.node(port) as c:
                    out = {}
                    for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                        out[int(master[1])] = (int(start), int(end))
                    return out
        return {}

    def healthy(self) -> bool:
        """Every live node says the cluster is ok."""
        for port in self.ports:
            if self.processes[port].poll() is None:
                try:
                    with self.node(port) as c:
                        if b"cluster_state:ok" not in c.execute_command("CLUSTER", "INFO"):
                            return False
                except redis.RedisError:
                    return False
        return True


def _free_pair() -> int:
    """A loopback port free together with its cluster bus port (port + 10000)."""
    while True:
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port + 10000 > 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    directory = tmp_path_factory.mktemp("redis-cluster")
    servers = RedisClusterServers(directory, [], {})
    while len(servers.ports) < 6:
        port = _free_pair()
        if port not in servers.ports:
            servers.ports.append(port)
    for port in servers.ports:
        servers.start_node(port)
    try:
        for port in servers.ports:
            poll_until(lambda port=port: servers.answers(port), 30, f"redis node {port} answering", every=0.05)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in servers.ports),
                        "--cluster-replicas", "1", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        poll_until(servers.healthy, 60, "the redis cluster ok", every=0.2)
        yield servers
    finally:
        for proc in servers.processes.values():
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class PostgresServer:
    """A PostgreSQL server this test session started (trust auth, user `sidecar`)."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes]
    owner: str | None  # the user it runs as when the tests run as root (postgres refuses root)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://sidecar@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql; its output (tuples only, unaligned)."""
        return subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql, self.url(database)],
                              check=True, capture_output=True, text=True, timeout=60).stdout

    def _run_as(self) -> dict[str, object]:
        """Popen's arguments that run a child as the owner (the child itself, so signals reach it)."""
        return {"user": self.owner, "group": self.owner, "extra_groups": []} if self.owner else {}

    def start(self) -> None:
        """Start (or restart) the server and wait until it accepts connections."""
        binary = os.path.join(os.path.dirname(_pg_bin("initdb")), "postgres")
        with (self.directory / "postgres.log").open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [binary, "-D", str(self.directory / "data"), "-p", str(self.port), "-k", str(self.directory),
                 "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "shared_buffers=128MB"],
                stdout=subprocess.DEVNULL, stderr=log, **self._run_as())  # type: ignore[call-overload]
        try:
            poll_until(lambda: subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]).returncode
                       == 0, 60, "postgres accepting connections",
                       detail=lambda: (self.directory / "postgres.log").read_text()[-2000:])
        except BaseException:
            self.process.kill()
            raise

    def stop(self, fast: bool = True) -> None:
        """Stop the server (SIGINT: fast shutdown) and wait for it."""
        self.process.send_signal(2 if fast else 15)
        self.process.wait(timeout=60)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.fail("postgresql is not installed: `make test` installs it (apt-get install postgresql)")
    return found[-1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for the session (in /tmp, since pytest's own directories are
    private to root and postgres must not run as root)."""
    owner = "postgres" if os.geteuid() == 0 else None
    directory = Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = PostgresServer(directory, port, None, owner)  # type: ignore[arg-type]
    if owner:
        uid = pwd.getpwnam(owner)
        os.chown(directory, uid.pw_uid, uid.pw_gid)
    subprocess.run([_pg_bin("initdb"), "-D", str(directory / "data"), "-U", "sidecar", "--auth=trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True, timeout=120,
                   **server._run_as())  # type: ignore[call-overload]  # noqa: SLF001
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


_DATABASES = itertools.count()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A new, empty database on the session's PostgreSQL server, for this test."""
    name = f"t{os.getpid()}_{next(_DATABASES)}"
    postgres_server.psql(f"CREATE DATABASE {name}")
    return postgres_server.url(name)


@pytest.fixture(params=["sqlite", "postgres"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Durable:
    """The durable store a test's daemons use: the test runs once with each."""
    from .helpers import Durable  # helpers imports this module

    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    return Durable(tmp_path / "bars.db", url)


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
