"""Real servers for the benchmarks: a private redis-server and the local exchange process."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson
import redis

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def redis_server(directory: Path, port: int = 0) -> Iterator[str]:
    """A redis-server on a unix socket in `directory` (and on 127.0.0.1:`port` if given); yields
    its socket's URL."""
    sock = directory / "redis.sock"
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--unixsocket", str(sock), "--save", "",
                             "--appendonly", "no", "--dir", str(directory)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                if redis.Redis(unix_socket_path=str(sock)).ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait()


def free_port() -> int:
    """A TCP port nothing listens on (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_exchange(port: int, always_open: bool = True) -> subprocess.Popen[bytes]:
    """The local exchange as its own process on `port`, open around the clock unless not
    `always_open` (then each market keeps its hours), once it accepts connections."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    flags = ["--always-open"] if always_open else []
    proc = subprocess.Popen([sys.executable, "-m", "sidecar.exchange", *flags, "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            break
        time.sleep(0.05)
    return proc


@contextlib.contextmanager
def exchange_process(always_open: bool = True) -> Iterator[str]:
    """`start_exchange` on a free port for the block; yields its base URL."""
    port = free_port()
    proc = start_exchange(port, always_open)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def stop(procs: Iterable[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM every process (a daemon then flushes and closes), wait up to `timeout` for each,
    and kill the ones still running."""
    procs = list(procs)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def main_with_json(doc: str, main: Callable[[Path | None], None]) -> None:
    """A benchmark's command line: its docstring as help, `--json FILE` to also write the results."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    main(parser.parse_args().json)


def quotes_env(ex_port: int, redis_url: str, lookback_minutes: int = 5) -> dict[str, str]:
    """What every bench daemon runs with: quotes mode against the local exchange on `ex_port`,
    no bootstrap and no gap scans (a first gap scan of the hour before start would land inside
    short runs), `lookback_minutes` of history at each symbol's first fetch."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "SIDECAR_LIVE_MODE": "quotes", "SIDECAR_QUOTE_BATCH": "500",
            "SIDECAR_CATCHUP_PER_CYCLE": "250", "SIDECAR_YAHOO_BASE_URL": f"http://127.0.0.1:{ex_port}",
            "SIDECAR_REDIS_URL": redis_url, "SIDECAR_BOOTSTRAP_DAYS": "0",
            "SIDECAR_LOOKBACK_MINUTES": str(lookback_minutes), "SIDECAR_FETCH_TIMEOUT_S": "5",
            "SIDECAR_LOG_LEVEL": "WARNING", "SIDECAR_GAP_SCAN_DAYS": "0"}


def save_report(report: dict[str, object], kind: str, command: str) -> None:
    """Print a benchmark's report (with the command that reproduces it) and save it as
    bench/results/<date>-<host>-<kind>.json."""
    report["command"] = command
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    print(text)
    out = ROOT / "bench" / "results" / f"{dt.date.today()}-{socket.gethostname()[:12]}-{kind}.json"
    out.write_text(text + "\n")
    print(f"saved {out}")


@contextlib.contextmanager
def postgres_server(directory: Path) -> Iterator[str]:
    """A private PostgreSQL server (initdb in `directory`, a loopback port, trust auth, run as
    `postgres` when this runs as root: the server refuses root); yields a database URL."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise SystemExit("postgresql is not installed (apt-get install postgresql)")
    bindir = found[-1].parent
    as_owner: dict = {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}
    data = directory / "pgdata"
    directory.mkdir(parents=True, exist_ok=True)
    if as_owner:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(directory, pw.pw_uid, pw.pw_gid)
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "sidecar", "--auth=trust", "--no-sync"],
                   check=True, capture_output=True, **as_owner)
    port = free_port()
    proc = subprocess.Popen([str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(directory),
                             "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=100"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_owner)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("postgres did not start")
            time.sleep(0.1)
        yield f"postgresql://sidecar@127.0.0.1:{port}/postgres"
    finally:
        proc.send_signal(2)  # fast shutdown
        proc.wait(timeout=60)
