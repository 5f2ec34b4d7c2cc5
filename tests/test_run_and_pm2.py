"""The two ways users start the daemon: `make run`, and PM2 with ecosystem.config.js."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
import redis

from sidecar.symbols import DEFAULT_SYMBOLS, lookup

from .conftest import ROOT, poll_until, subprocess_env
from .test_e2e import _free_port

pytestmark = pytest.mark.e2e


def _get_json(url: str) -> dict:
    """GET a JSON document, whatever the status (/health answers 503 while down)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback only
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return json.loads(exc.read())


def _wait_healthy(port: int, timeout: float) -> tuple[dict, float]:
    """Poll /health until status ok with every symbol fresh; return it and the seconds it took."""
    t0 = time.monotonic()
    last: object = None
    while time.monotonic() - t0 < timeout:
        try:
            doc = _get_json(f"http://127.0.0.1:{port}/health")
            if doc["status"] == "ok" and all(f["fresh"] for f in doc["freshness"].values()):
                return doc, time.monotonic() - t0
            last = doc
        except OSError as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"not healthy within {timeout}s: {last}")


def _make_run(tmp_path: Path, redis_url: str) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    """`make run` in its own session, as from a terminal: (process, HTTP port, exchange port, log)."""
    http_port, exchange_port = _free_port(), _free_port()
    env = subprocess_env(SIDECAR_REDIS_URL=redis_url, SIDECAR_HTTP_PORT=str(http_port),
                         SIDECAR_EXCHANGE_PORT=str(exchange_port), SIDECAR_DB_PATH=str(tmp_path / "bars.db"))
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, http_port, exchange_port, log


def _ctrl_c(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    proc.wait(timeout=30)


def _listening_or_gone(proc: subprocess.Popen[bytes], log: Path, http_port: int) -> bool:
    return f"http listening on http://127.0.0.1:{http_port}" in log.read_text() or proc.poll() is not None


def _make_run_listening(tmp_path: Path, redis_url: str) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    """`make run` whose daemon listens on the HTTP port picked for it. A port picked free can be
    taken by another test's daemon before this one binds it: then this daemon stops (port in
    use), the other answers /health, and CI once found no bars stored here. Started again on new
    ports then, up to three times."""
    for attempt in range(3):
        where = tmp_path / f"run{attempt}"
        where.mkdir()
        proc, http_port, exchange_port, log = _make_run(where, redis_url)
        poll_until(functools.partial(_listening_or_gone, proc, log, http_port), 30, "make run listening or gone",
                   every=0.05, detail=log.read_text)
        if proc.poll() is None:
            return proc, http_port, exchange_port, log
        proc.wait()
    raise AssertionError(f"make run never listened on its port: {log.read_text()}")


def test_make_run_is_healthy_within_15_seconds_and_ctrl_c_stops_everything(tmp_path: Path, redis_url: str) -> None:
    t0 = time.monotonic()
    proc, http_port, exchange_port, log = _make_run_listening(tmp_path, redis_url)
    try:
        doc, _took = _wait_healthy(http_port, 15)
        assert set(doc["freshness"]) == set(DEFAULT_SYMBOLS) and time.monotonic() - t0 < 15
    finally:
        _ctrl_c(proc)
    text = log.read_text()
    assert "persisted_through" in text and "stopped" in text, text
    with sqlite3.connect(log.parent / "bars.db") as db:
        assert db.execute("SELECT count(DISTINCT symbol) FROM bars").fetchone()[0] == len(DEFAULT_SYMBOLS), text
    with pytest.raises(OSError):  # the exchange went down with it
        _get_json(f"http://127.0.0.1:{exchange_port}/_exchange/stats")
    with redis.Redis.from_url(redis_url) as c:  # a Redis it did not start is left running
        assert c.ping()


def test_make_run_stops_the_redis_server_it_started(tmp_path: Path) -> None:
    redis_port = _free_port()
    proc, http_port, _, log = _make_run(tmp_path, f"redis://127.0.0.1:{redis_port}/0")
    try:
        _wait_healthy(http_port, 30)
        with socket.create_connection(("127.0.0.1", redis_port), timeout=2):
            pass  # the redis-server make run started
    finally:
        _ctrl_c(proc)
    text = log.read_text()
    assert f"starting redis-server on 127.0.0.1:{redis_port}" in text and "stopped the redis-server" in text, text
    with pytest.raises(OSError):  # and it is gone
        socket.create_connection(("127.0.0.1", redis_port), timeout=2).close()


@pytest.mark.skipif(not (ROOT / "node_modules/.bin/pm2").exists(), reason="PM2 not installed: run `make pm2`")
def test_pm2_runs_both_apps_and_pm2_stop_flushes_before_its_sigkill(tmp_path: Path, redis_url: str) -> None:
    pm2 = str(ROOT / "node_modules/.bin/pm2")
    http_port, exchange_port = _free_port(), _free_port()
    db = tmp_path / "bars.db"
    env = subprocess_env(
        PM2_HOME=str(tmp_path / "pm2"), SIDECAR_REDIS_URL=redis_url, SIDECAR_HTTP_PORT=str(http_port),
        SIDECAR_EXCHANGE_PORT=str(exchange_port), SIDECAR_YAHOO_BASE_URL=f"http://127.0.0.1:{exchange_port}",
        SIDECAR_DB_PATH=str(db), SIDECAR_FLUSH_INTERVAL_S="86400",  # only the stop flushes
        SIDECAR_BOOTSTRAP_DAYS="0",  # what the exchange served must all be stored: no cut-off bootstrap
    )

    def run(*args: str) -> str:
        done = subprocess.run([pm2, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    try:
        run("start", "ecosystem.config.js")
        _wait_healthy(http_port, 30)
        listing = {p["name"]: p for p in json.loads(run("jlist"))}
        assert {"sidecar", "sidecar-exchange"} <= set(listing)
        assert listing["sidecar"]["pm2_env"]["kill_timeout"] == 10000
        if db.exists():
            with closing(sqlite3.connect(db)) as conn:
                assert conn.execute("SELECT count(*) FROM bars").fetchone()[0] == 0
        run("stop", "sidecar")  # SIGINT, then SIGKILL after kill_timeout
        with closing(sqlite3.connect(db)) as conn:
            rows = {(r[0], r[1]): tuple(r[2:]) for r in conn.execute(
                "SELECT symbol, ts, open, high, low, close, volume FROM bars WHERE timeframe='1m'")}
        served = {}
        for sym in DEFAULT_SYMBOLS:
            yahoo = urllib.parse.quote(lookup(sym).yahoo)
            bars = _get_json(f"http://127.0.0.1:{exchange_port}/_exchange/served?symbol={yahoo}")["bars"]
            served.update({(sym, b[0]): tuple(b[1:]) for b in bars})
        assert rows and rows == served
        assert json.loads(run("jlist"))[0]["pm2_env"]["restart_time"] == 0
    finally:
        subprocess.run([pm2, "kill"], cwd=ROOT, env=env, capture_output=True, timeout=60)
        shutil.rmtree(tmp_path / "pm2", ignore_errors=True)


@pytest.mark.skipif(not (ROOT / "node_modules/.bin/pm2").exists(), reason="PM2 not installed: run `make pm2`")
def test_pm2_runs_n_cluster_members_that_split_the_partitions_and_hand_over_on_stop(
        tmp_path: Path, redis_url: str, postgres_url: str) -> None:
    pm2 = str(ROOT / "node_modules/.bin/pm2")
    http_port, exchange_port = _free_port(), _free_port()
    env = subprocess_env(
        PM2_HOME=str(tmp_path / "pm2"), SIDECAR_REDIS_URL=redis_url, SIDECAR_HTTP_PORT=str(http_port),
        SIDECAR_EXCHANGE_PORT=str(exchange_port), SIDECAR_YAHOO_BASE_URL=f"http://127.0.0.1:{exchange_port}",
        SIDECAR_STORE_URL=postgres_url, SHARDS="2", SIDECAR_PARTITIONS="8", SIDECAR_BOOTSTRAP_DAYS="0")

    def run(*args: str) -> str:
        done = subprocess.run([pm2, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def owned(port: int) -> set[str]:
        try:
            return set(_get_json(f"http://127.0.0.1:{port}/health")["cluster"]["owned"])
        except OSError:
            return set()

    def wait(condition: Callable[[], bool], what: str) -> None:
        poll_until(condition, 60, what, every=0.3, detail=lambda: run("logs", "--nostream", "--lines", "40"))

    try:
        run("start", "ecosystem.cluster.config.js")
        names = {p["name"] for p in json.loads(run("jlist"))}
        assert names == {"sidecar-exchange", "sidecar-shard-0", "sidecar-shard-1"}
        wait(lambda: len(owned(http_port)) + len(owned(http_port + 1)) == 8 and bool(owned(http_port + 1))
             and not owned(http_port) & owned(http_port + 1), "two members splitting 8 partitions")
        run("stop", "sidecar-shard-1")  # SIGINT: it flushes, gives its leases back, and shard 0 takes them
        wait(lambda: len(owned(http_port)) == 8, "shard 0 owning every partition")
    finally:
        subprocess.run([pm2, "kill"], cwd=ROOT, env=env, capture_output=True, timeout=60)
        shutil.rmtree(tmp_path / "pm2", ignore_errors=True)
