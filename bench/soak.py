"""End-to-end soak: the exchange, redis-server and the sidecar daemon as separate processes, the
daemon in quotes mode on a named universe, measured the way a user runs it.

    .venv/bin/python -m bench.soak --symbols 5000 --minutes 10          (the soak)
    .venv/bin/python -m bench.soak --quick                              (5,000 symbols for 60 s)
    .venv/bin/python -m bench.soak --quick --history-minutes 240       (the same with every 1m indicator warm)
    .venv/bin/python -m bench.soak --scaling 100,1000,5000,20000 --seconds 60

The daemon writes one JSON line per cycle (SIDECAR_CYCLE_TRACE); this harness samples each
process's CPU and RSS from /proc and Redis's INFO once a second, reads the daemon's /metrics at
the end, and writes a report (`bench/results/<date>-<host>.md`) with PNG plots: cycle time over
the run with its p99, per-stage stacked time, RSS over time, and the scaling curve. Beside it,
in the same run: `redis-benchmark` with pipelining (the machine's Redis rate) and SQLite
`executemany` of a flush's rows into the store's schema (its insert rate).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import redis

from sidecar.stores.sqlite_store import SCHEMA

from .quotes import universe
from .servers import ROOT, free_port, quotes_env, redis_server, start_exchange, stop

STAGES = ("fetch", "parse", "build", "validate", "features", "timeframes", "redis", "sqlite_buffer", "scan")
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(slots=True)
class Sample:
    """One second of the run: wall time, per-process CPU seconds and RSS bytes, Redis counters."""

    t: float
    cpu: dict[str, float]
    rss: dict[str, int]
    redis_commands: int


@dataclass(slots=True)
class Run:
    """What one soak measured."""

    symbols: int
    seconds: float
    warmup_s: float
    cycles: list[dict[str, float]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    reads: list[float] = field(default_factory=list)  # seconds per consumer read (bar + features)
    value_bytes: list[int] = field(default_factory=list)  # sizes of the values those reads returned
    redis_usec: dict[str, int] = field(default_factory=dict)  # Redis's own time per command (INFO commandstats)
    connections: int = 0  # connections the daemon opened to the exchange while measured

    def ms(self, key: str) -> np.ndarray:
        """A per-cycle field in milliseconds."""
        return np.array([c[key] for c in self.cycles]) * 1000.0 if self.cycles else np.zeros(0)


def _exchange_connections(port: int) -> int:
    """Connections clients opened to the exchange so far (its /_exchange/stats)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_exchange/stats", timeout=5) as resp:  # noqa: S310
        return int(orjson.loads(resp.read())["connections"])


def _proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and RSS bytes of a process."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/statm") as f:
        rss_pages = int(f.read().split()[1])
    return (int(parts[11]) + int(parts[12])) / TICKS, rss_pages * PAGE


def _child(pid: int, timeout: float = 30.0) -> int:
    """The first child process of `pid` (the program a wrapper such as py-spy started)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise TimeoutError(f"process {pid} started no child in {timeout} s")


def _wait_http(url: str, timeout: float) -> None:
    """Until `url` answers; a daemon starting 20,000 symbols answers slowly for a while."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10):  # noqa: S310 - loopback only
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _metrics(port: int) -> dict[str, float]:
    """The daemon's Prometheus samples without labels worth keeping, as name -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        with contextlib.suppress(ValueError):
            out[name] = out.get(name, 0.0) + float(value) if "{" in name else float(value)
    return out


def soak(n: int, seconds: float, work: Path, warmup_limit: float = 240.0, history_minutes: int = 5,
         profile: Path | None = None, pin: bool = False) -> Run:
    """Run exchange + daemon on `n` symbols; measure `seconds` after the warm-up. Each symbol's
    first fetch reaches `history_minutes` back: 5 leaves every 1m indicator but OBV and VWAP
    warming up for the whole run; 240 warms them all, as stored history does for a user.
    `profile`: run the daemon under py-spy (200 samples a second), its speedscope profile there.
    `pin`: the daemon on CPU 0, everything else (the exchange, redis-server, this process) on
    CPU 1, to see the daemon's cycle with a core of its own (a diagnosis, not the soak's setup)."""
    shared = os.sched_getaffinity(0)
    with redis_server(work) as redis_url:
        redis_pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
        ex_port, http_port = free_port(), free_port()
        exchange = start_exchange(ex_port)
        trace = work / f"trace-{n}.jsonl"
        symbols_file = work / f"symbols-{n}.txt"  # 50,000 names do not fit in one environment variable
        symbols_file.write_text("\n".join(universe(n)))
        daemon_env = {**quotes_env(ex_port, redis_url, history_minutes), "SIDECAR_SYMBOLS": f"@{symbols_file}",
                      "SIDECAR_DB_PATH": str(work / f"soak-{n}.db"), "SIDECAR_HTTP_PORT": str(http_port),
                      "SIDECAR_CYCLE_TRACE": str(trace)}
        log = (work / f"daemon-{n}.log").open("wb")
        command = [sys.executable, "-m", "sidecar", "run"]
        if pin:
            command = ["taskset", "-c", "0", *command]
            for pid in (redis_pid, exchange.pid, os.getpid()):
                _pin(pid, {1})
        if profile is not None:
            command = [str(Path(sys.executable).with_name("py-spy")), "record", "--rate", "200", "--format",
                       "speedscope", "-o", str(profile), "--", *command]
        daemon = subprocess.Popen(command, env=daemon_env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
        daemon_pid = daemon.pid if profile is None else _child(daemon.pid)
        r = redis.Redis.from_url(redis_url)
        try:
            _wait_http(f"http://127.0.0.1:{http_port}/health", 600)
            t0 = time.time()
            first_minute = int(t0) // 60
            # warm-up: the chart catch-up of every symbol, and of the minute the poller joined
            # half-way. That minute's catch-up begins a few seconds after it closes (the source's
            # settling delay), so the cycles just after its close have no history request yet:
            # the warm-up lasts into the minute after the first whole one. (Ended at the first
            # quiet cycles, a quick soak once measured 5,804 catch-up requests in its minute.)
            while time.time() - t0 < warmup_limit:
                time.sleep(1)
                lines = trace.read_bytes().splitlines() if trace.exists() else []
                if lines:
                    last = orjson.loads(lines[-1])
                    recent = [orjson.loads(x) for x in lines[-5:]]
                    if int(last["t"]) // 60 > first_minute + 1 and all(c["history_requests"] == 0 for c in recent):
                        break
            warmup = time.time() - t0
            start_line = len(trace.read_bytes().splitlines())
            pids = {"sidecar": daemon_pid, "exchange": exchange.pid, "redis": redis_pid}
            r.config_resetstat()  # Redis's own time per command over the measured part only
            opened = _exchange_connections(ex_port)
            run = Run(n, seconds, warmup)
            end = time.monotonic() + seconds
            names = universe(n)
            rng = np.random.default_rng(0)
            while time.monotonic() < end:
                cpu, rss = {}, {}
                for name, pid in pids.items():
                    cpu[name], rss[name] = _proc_stats(pid)
                run.samples.append(Sample(time.time(), cpu, rss, int(r.info("stats")["total_commands_processed"])))
                for sym in rng.choice(names, 10):  # a consumer reading a symbol's newest bar and features
                    t_read = time.perf_counter()
                    values = r.get(f"sidecar:{{{sym}}}:bar:1m"), r.get(f"sidecar:{{{sym}}}:features:1m")
                    run.reads.append(time.perf_counter() - t_read)
                    run.value_bytes += [len(v) for v in values if v]
                time.sleep((0.5 - time.time() % 1) % 1 or 1.0)  # to the next mid-second, away from cycle starts
            run.metrics = _metrics(http_port)
            run.connections = _exchange_connections(ex_port) - opened
            run.redis_usec = {k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in r.info("commandstats").items()}
            run.cycles = [orjson.loads(x) for x in trace.read_bytes().splitlines()[start_line:]]
        finally:
            if profile is None:
                stop([daemon], 30)
            else:  # py-spy writes its profile once the daemon it runs has exited
                os.kill(daemon_pid, signal.SIGTERM)
                daemon.wait(60)
            exchange.terminate()
            exchange.wait()
            log.close()
            os.sched_setaffinity(0, shared)
    return run


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of a process onto `cpus`."""
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(task), cpus)


def redis_benchmark(work: Path, value_bytes: int) -> float:
    """SET requests per second with 16 commands per pipeline and values of the daemon's mean
    size (the machine's Redis rate)."""
    with redis_server(work) as url:
        out = subprocess.run(["redis-benchmark", "-s", url.removeprefix("unix://"), "-t", "set", "-n", "500000",
                              "-P", "16", "-q", "-d", str(value_bytes)], capture_output=True, text=True,
                             timeout=300).stdout
    # "SET: 812347.19 requests per second, p50=..."
    return float(out.replace("\r", "\n").strip().splitlines()[-1].split(":")[1].split()[0])


def sqlite_rate(work: Path, rows: int = 100_000, outputs: int = 40) -> float:
    """Bars per second of plain `executemany` of the rows a flush writes (each bar, and the
    features at its close as one blob) into the store's own schema, in one transaction."""
    db = sqlite3.connect(work / "rate.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    bars = [(f"S{i % 5000:05d}", "1m", 1_800_000_000 + 60 * (i // 5000), 1.0, 2.0, 0.5, 1.5, 10.0, "y", 0)
            for i in range(rows)]
    blob = np.arange(outputs, dtype="<f8").tobytes()
    features = [(b[0], b[1], b[2], blob) for b in bars]
    t0 = time.perf_counter()
    with db:
        db.executemany("INSERT INTO bars VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", bars)
        db.executemany("INSERT INTO features VALUES (?, ?, ?, ?)", features)
    rate = rows / (time.perf_counter() - t0)
    db.close()
    return rate


def naive_cycle_ms(n: int, work: Path) -> dict[str, float]:
    """The naive per-symbol pipeline on the same symbols, by stage: one chart request per symbol
    (concurrent), one Redis round trip per command for each bar, and TA-Lib recomputing every
    indicator over a 500-bar window per symbol (measured on 200 symbols, scaled)."""
    import asyncio
    from dataclasses import replace

    from sidecar.settings import Settings

    from .features import bench_talib_batch, market
    from .pipeline import bench_redis
    from .quotes import chart_cycles
    from .servers import exchange_process

    async def fetch_and_redis(exchange: str, redis_url: str) -> tuple[float, float]:
        s = replace(Settings(), redis_url=redis_url, yahoo_base_url=exchange, db_path=work / "naive.db",
                    lookback_minutes=1, fetch_timeout_s=10.0, bootstrap_days=0.0)
        fetches = [c["fetch"] for c in await chart_cycles(s, n)]
        _ours, _pipelined, per_command = await bench_redis(redis_url, n, 3)
        return float(np.median(fetches)), per_command

    with redis_server(work) as redis_url, exchange_process() as exchange:
        fetch_ms, redis_ms = asyncio.run(fetch_and_redis(exchange, redis_url))
    h, l, c, v = market(200, 520)
    talib_ms = bench_talib_batch(h, l, c, v, history=510, steps=3, subset=200)["step"][0] * n / 200
    return {"naive_fetch_ms": fetch_ms, "naive_redis_ms": redis_ms, "naive_talib_ms": talib_ms,
            "naive_total_ms": fetch_ms + redis_ms + talib_ms}


def summarize(run: Run) -> dict[str, float]:
    """The figures of one run."""
    out: dict[str, float] = {"symbols": run.symbols, "cycles": len(run.cycles), "warmup_s": run.warmup_s}
    for key in ("cycle_s", *STAGES):
        v = run.ms(key)
        for q in (50, 95, 99):
            out[f"{key}_p{q}"] = float(np.percentile(v, q)) if len(v) else float("nan")
        out[f"{key}_max"] = float(v.max()) if len(v) else float("nan")
    to_redis = sum(run.ms(k) for k in ("fetch", "parse", "build", "validate", "features", "redis")) \
        if run.cycles else np.zeros(0)
    for q in (50, 95, 99):
        out[f"to_redis_p{q}"] = float(np.percentile(to_redis, q)) if len(to_redis) else float("nan")
    out["read_p50_ms"] = float(np.percentile(run.reads, 50)) * 1000 if run.reads else float("nan")
    out["read_p99_ms"] = float(np.percentile(run.reads, 99)) * 1000 if run.reads else float("nan")
    busy = {k: v for k, v in run.redis_usec.items() if k not in ("info", "config|resetstat", "get")}  # ours, not the probe's
    out["redis_own_ms_per_cycle"] = sum(busy.values()) / 1000 / max(1, len(run.cycles))
    out["redis_top"] = ", ".join(f"{k} {v / 1000 / max(1, len(run.cycles)):.1f}"  # type: ignore[assignment]
                                 for k, v in sorted(busy.items(), key=lambda kv: -kv[1])[:4])
    values = np.array([c.get("redis_values", 2 * run.symbols) for c in run.cycles], dtype=np.float64)
    redis_s = run.ms("redis") / 1000
    # values per second of the Redis stage (encode, RESP and the round trip), per cycle: its median
    out["redis_values_per_s"] = float(np.median(values / np.maximum(redis_s, 1e-6))) if len(values) else 0.0
    out["redis_values_p50"] = float(np.median(values)) if len(values) else 0.0
    out["value_bytes_mean"] = float(np.mean(run.value_bytes)) if run.value_bytes else 120.0
    out["overruns"] = run.cycles[-1]["overruns"] - run.cycles[0]["overruns"] if run.cycles else 0
    out["history_requests"] = sum(c["history_requests"] for c in run.cycles)
    quotes = len(run.cycles) * -(-run.symbols // 500)  # one batch quote per 500 symbols per cycle
    minutes = max(run.seconds, 1.0) / 60
    out["requests_per_min_per_1000"] = (out["history_requests"] + quotes) / minutes / (run.symbols / 1000)
    out["connections_per_min"] = run.connections / minutes
    out["closed"] = sum(c["closed"] for c in run.cycles)
    s0, s1 = run.samples[0], run.samples[-1]
    span = s1.t - s0.t or 1.0
    for name in s0.cpu:
        out[f"cpu_{name}_pct"] = 100.0 * (s1.cpu[name] - s0.cpu[name]) / span
        out[f"rss_{name}_start_mb"] = s0.rss[name] / 2**20
        out[f"rss_{name}_end_mb"] = s1.rss[name] / 2**20
    after_first_minute = [s for s in run.samples if s.t - s0.t >= 60] or run.samples
    base = after_first_minute[0].rss["sidecar"]
    out["rss_growth_after_1min_pct"] = 100.0 * (s1.rss["sidecar"] - base) / base
    half = run.samples[len(run.samples) // 2].rss["sidecar"]  # after one-off events such as the first gap scan
    out["rss_growth_second_half_pct"] = 100.0 * (s1.rss["sidecar"] - half) / half
    out["redis_commands_per_s"] = (s1.redis_commands - s0.redis_commands) / span
    out["cpu_ms_per_symbol_s"] = 10.0 * out["cpu_sidecar_pct"] / run.symbols  # sidecar CPU ms per symbol-second
    flush_n = run.metrics.get("sidecar_sqlite_flush_seconds_count", 0.0)
    out["sqlite_flushes"] = flush_n
    out["sqlite_flush_ms_mean"] = 1000.0 * run.metrics.get("sidecar_sqlite_flush_seconds_sum", 0.0) / max(flush_n, 1)
    rows = run.metrics.get("sidecar_sqlite_rows_written_total", 0.0)
    out["sqlite_rows_per_s_of_flush"] = rows / max(run.metrics.get("sidecar_sqlite_flush_seconds_sum", 0.0), 1e-9)
    return out


def plots(runs: list[Run], scaling: list[dict[str, float]], out_dir: Path, stem: str) -> list[str]:
    """PNG plots next to the report; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    main = runs[0]  # the soak; the scaling points follow it
    t = np.array([c["t"] for c in main.cycles]) - main.cycles[0]["t"]
    cycle = main.ms("cycle_s")
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(t, cycle, lw=0.6, label="cycle")
    ax.axhline(np.percentile(cycle, 99), color="red", ls="--", label=f"p99 {np.percentile(cycle, 99):.0f} ms")
    ax.set(xlabel="s", ylabel="ms", title=f"cycle time, {main.symbols} symbols")
    ax.legend()
    names.append(f"{stem}-cycle.png")
    fig.savefig(out_dir / names[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4))
    ax.stackplot(t, *[main.ms(s) for s in STAGES], labels=STAGES, lw=0)
    ax.set(xlabel="s", ylabel="ms", title="time per stage (stacked)")
    ax.legend(loc="upper left", fontsize=8)
    names.append(f"{stem}-stages.png")
    fig.savefig(out_dir / names[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4))
    ts = np.array([s.t for s in main.samples]) - main.samples[0].t
    for name in main.samples[0].rss:
        ax.plot(ts, [s.rss[name] / 2**20 for s in main.samples], label=name)
    ax.set(xlabel="s", ylabel="MiB", title="RSS over the run")
    ax.legend()
    names.append(f"{stem}-rss.png")
    fig.savefig(out_dir / names[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    if len(scaling) > 1:
        fig, ax1 = plt.subplots(figsize=(8, 4))
        xs = [s["symbols"] for s in scaling]
        ax1.plot(xs, [s["cycle_s_p99"] for s in scaling], "o-", label="cycle p99 (ms)")
        ax1.plot(xs, [s["cycle_s_p50"] for s in scaling], "o--", label="cycle p50 (ms)")
        ax1.set(xscale="log", yscale="log", xlabel="symbols", ylabel="ms", title="scaling")
        ax2 = ax1.twinx()
        ax2.plot(xs, [s["cpu_ms_per_symbol_s"] for s in scaling], "s:", color="gray", label="CPU ms / symbol / s")
        ax2.set_ylabel("CPU ms per symbol-second")
        ax1.legend(loc="upper left")
        ax2.legend(loc="lower right")
        names.append(f"{stem}-scaling.png")
        fig.savefig(out_dir / names[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return names


def minute_close_split(run: Run) -> dict[str, object]:
    """The cycles in which a minute closes (at least half the symbols' closed bars arrive) against
    the others: how many, their p50 and p99, each stage's mean, and how many of the slowest 1%."""
    cycle = run.ms("cycle_s")
    closing = np.array([c["closed"] >= run.symbols / 2 for c in run.cycles], dtype=bool)
    slowest = np.argsort(cycle)[::-1][: max(1, len(cycle) // 100)]
    out: dict[str, object] = {"n_closing": int(closing.sum()), "n": len(cycle),
                              "slowest": len(slowest), "slowest_closing": int(closing[slowest].sum())}
    # a minute close on a 5-minute boundary closes the 5m bars too (15m and 1h at theirs)
    boundary = closing & np.array([int(c["t"]) // 60 % 5 == 0 for c in run.cycles], dtype=bool)
    out["n_boundary"] = int(boundary.sum())
    for name, mask in (("closing", closing), ("other", ~closing), ("boundary", boundary),
                       ("plain_close", closing & ~boundary)):
        v = cycle[mask]
        out[f"{name}_p50"] = float(np.percentile(v, 50)) if len(v) else float("nan")
        out[f"{name}_p99"] = float(np.percentile(v, 99)) if len(v) else float("nan")
        out[f"{name}_stages"] = {k: float(run.ms(k)[mask].mean()) if mask.any() else float("nan") for k in STAGES}
    return out


def _split_text(run: Run) -> str:
    m = minute_close_split(run)
    stages = ", ".join(f"{k} {m['closing_stages'][k]:.0f} vs {m['other_stages'][k]:.0f}"  # type: ignore[index]
                       for k in STAGES)
    return (f"- Where the p99 comes from: {m['n_closing']} of the {m['n']} cycles are ones in which a minute "
            f"closes (every symbol's closed bar goes through the spike filter, the indicator commit, Redis's "
            f"history and the SQLite buffer, beside the forming bars); they take p50 {m['closing_p50']:.0f} ms "
            f"against {m['other_p50']:.0f} ms for the others (whose p99 is {m['other_p99']:.0f} ms), and "
            f"{m['slowest_closing']} of the slowest {m['slowest']} cycles (the 1% above the p99) are among them. "
            f"Mean ms per stage, minute-closing vs other cycles: {stages}. Of the minute-closing cycles, "
            f"{m['n_boundary']} fall on a 5-minute boundary, where the 5m bars close too (and 15m and 1h at theirs): "
            f"p50 {m['boundary_p50']:.0f} ms, Redis stage {m['boundary_stages']['redis']:.0f} ms (mean), against "  # type: ignore[index]
            f"{m['plain_close_p50']:.0f} and {m['plain_close_stages']['redis']:.0f} ms for the others "  # type: ignore[index]
            "(bench/closes.py measures Redis's time for each timeframe's closed bars).")


def _scaling_text(summaries: list[dict[str, float]]) -> list[str]:
    """Per-symbol cost along the scaling curve, and the 20,000-symbol targets."""
    lines = ["- Scaling: CPU ms per symbol-second " + ", ".join(
        f"{s['symbols']:,.0f} → {s['cpu_ms_per_symbol_s']:.4f}" for s in summaries) + "; cycle p50 per 1,000 symbols "
        + ", ".join(f"{s['symbols']:,.0f} → {1000 * s['cycle_s_p50'] / s['symbols']:.2f} ms" for s in summaries) + "."]
    big = [s for s in summaries if s["symbols"] == 20000]
    if big:
        lines.append(f"- 20,000 symbols: zero overruns → {big[0]['overruns']:.0f}; p99 ≤ 400 ms → "
                     f"{big[0]['cycle_s_p99']:.0f} ms.")
    return lines


def report(summaries: list[dict[str, float]], extra: dict[str, float], images: list[str], args: str,
           runs: list[Run]) -> str:
    """The markdown report."""
    soak_run = runs[0]  # the soak; the scaling points follow it
    main = next(s for s in summaries if s["symbols"] == soak_run.symbols)
    lines = [f"# Soak report {dt.date.today()} on {socket.gethostname()} ({os.cpu_count()} cores)", "",
             f"Command: `python -m bench.soak {args}`. The exchange, redis-server and the daemon (quotes mode, "
             "500 symbols per batch quote) are separate processes on this machine; times are from the daemon's "
             "cycle trace, CPU and RSS from /proc, Redis commands from INFO.", "",
             "| symbols | cycles | warm-up s | tick→Redis p50 / p99 ms | cycle p50 / p95 / p99 / max ms | overruns "
             "| chart requests | requests per min per 1,000 symbols | connections opened per min | sidecar CPU % "
             "| CPU ms per symbol-s | RSS start→end MiB | RSS growth after 1 min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(
            f"| {s['symbols']:.0f} | {s['cycles']:.0f} | {s['warmup_s']:.0f} | {s['to_redis_p50']:.1f} / "
            f"{s['to_redis_p99']:.1f} | {s['cycle_s_p50']:.1f} / {s['cycle_s_p95']:.1f} / {s['cycle_s_p99']:.1f} / "
            f"{s['cycle_s_max']:.1f} | {s['overruns']:.0f} | {s['history_requests']:.0f} | "
            f"{s['requests_per_min_per_1000']:.0f} | {s.get('connections_per_min', float('nan')):.1f} | "
            f"{s['cpu_sidecar_pct']:.0f} | {s['cpu_ms_per_symbol_s']:.4f} | {s['rss_sidecar_start_mb']:.0f} → "
            f"{s['rss_sidecar_end_mb']:.0f} | {s['rss_growth_after_1min_pct']:+.1f}% |")
    lines += ["", f"## {main['symbols']:.0f} symbols: stages (ms)", "", "| stage | p50 | p95 | p99 | max |",
              "|---|---|---|---|---|"]
    for key in STAGES:
        lines.append(f"| {key} | {main[f'{key}_p50']:.1f} | {main[f'{key}_p95']:.1f} | {main[f'{key}_p99']:.1f} | "
                     f"{main[f'{key}_max']:.1f} |")
    redis_rate = main["redis_commands_per_s"]
    writes_per_s = main["redis_values_per_s"]  # newest bars, features and history rows of every timeframe
    redis_ratio = extra["redis_benchmark_set_per_s"] / writes_per_s
    naive_ratio = extra["naive_total_ms"] / main["cycle_s_p50"] if "naive_total_ms" in extra else None
    if "naive_total_ms" in extra:
        lines += ["", f"## Against a naive pipeline ({main['symbols']:.0f} symbols, same exchange)", "",
                  "| | naive ms | ours (cycle p50) ms | ratio |", "|---|---|---|---|",
                  f"| one chart request per symbol (concurrent) | {extra['naive_fetch_ms']:.0f} | | |",
                  f"| one Redis round trip per command | {extra['naive_redis_ms']:.0f} | | |",
                  f"| TA-Lib over a 500-bar window per symbol | {extra['naive_talib_ms']:.0f} | | |",
                  f"| **whole cycle** | {extra['naive_total_ms']:.0f} | {main['cycle_s_p50']:.1f} | "
                  f"{naive_ratio:.0f}x |"]
    lines += ["", "## Against the machine's parts and the targets", "",
              f"- CPU: sidecar {main['cpu_sidecar_pct']:.0f}%, exchange {main['cpu_exchange_pct']:.0f}%, "
              f"redis-server {main['cpu_redis_pct']:.0f}% (of one core each).",
              f"- Redis: {redis_rate:,.0f} commands/s on average from the daemon (INFO); during its Redis stage "
              f"the daemon writes {main['redis_values_p50']:,.0f} values (p50; newest bars, features and closed "
              f"bars of every timeframe) in {main['redis_p50']:.1f} ms (p50), {writes_per_s:,.0f} values/s "
              f"(median over the cycles), vs "
              f"`redis-benchmark -P 16 -d {extra['value_bytes']}` (the mean size of those values) SET "
              f"{extra['redis_benchmark_set_per_s']:,.0f}/s "
              f"({redis_ratio:.1f}x faster). Of the {main['redis_p50']:.1f} ms, Redis itself spends "
              f"{main['redis_own_ms_per_cycle']:.1f} ms per cycle (INFO commandstats, ms per cycle by command: "
              f"{main['redis_top']}); the rest is packing in Python and the transfer.",
              f"- SQLite: {main['sqlite_flushes']:.0f} flushes, mean {main['sqlite_flush_ms_mean']:.1f} ms, "
              f"{main['sqlite_rows_per_s_of_flush']:,.0f} bars/s while flushing (each with its features row; the "
              f"flush runs on aiosqlite's thread beside the cycle) vs plain `executemany` of the same rows into "
              f"the same schema {extra['sqlite_executemany_rows_per_s']:,.0f} bars/s (alone on the machine; "
              f"bench/test_stages.py::test_sqlite_flush compares the two side by side without the cycle).",
              f"- A consumer's read of a symbol's newest bar and features (2 GETs) while the daemon runs: p50 "
              f"{main['read_p50_ms']:.2f} ms, p99 {main['read_p99_ms']:.2f} ms (seed target < 5 ms); signals (scan "
              f"stage) p99 {main['scan_p99']:.1f} ms (< 50 ms); features p99 {main['features_p99']:.1f} ms (< 100 ms); "
              f"all {main['symbols']:,.0f} symbols refreshed in < 60 s → every second, in {main['cycle_s_p50']:.0f} ms "
              f"(cycle p50; {60_000 / main['cycle_s_p50']:.0f}x inside the seed target).",
              f"- Targets ({main['symbols']:,.0f} symbols): cycle p50 ≤ 40 ms → {main['cycle_s_p50']:.0f} ms, "
              f"p99 ≤ 100 ms → {main['cycle_s_p99']:.0f} ms; zero overruns → {main['overruns']:.0f}; RSS growth ≤ 5% "
              f"after the first minute → {main['rss_growth_after_1min_pct']:+.1f}% (over the second half of the run: "
              f"{main['rss_growth_second_half_pct']:+.1f}%); CPU per symbol-second ≤ 0.006 ms → "
              f"{main['cpu_ms_per_symbol_s']:.4f} ms" + (
                  f"; ≥ 150x the naive pipeline → {naive_ratio:.0f}x" if naive_ratio is not None else "") +
              f"; Redis stage within 2x of redis-benchmark → {redis_ratio:.1f}x; SQLite flush within 1.5x of "
              f"executemany → {extra['sqlite_executemany_rows_per_s'] / max(1.0, main['sqlite_rows_per_s_of_flush']):.1f}x.",
              *_scaling_text(summaries),
              _split_text(soak_run), ""]
    lines += [f"![{name}]({name})" for name in images]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse the flags, run the soak, the scaling points and the baselines, write one report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="5,000 symbols for 60 s, no scaling points")
    parser.add_argument("--scaling", default="100,1000,20000,50000",
                        help="further symbol counts for the scaling curve (the soak is one point); '' for none")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per scaling point")
    parser.add_argument("--history-minutes", type=int, default=5,
                        help="minutes of 1m bars each symbol's first fetch reaches back: 5 (the default) leaves "
                             "26 of the 28 outputs warming up all run, 240 warms every 1m indicator")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--profile", type=Path, default=None,
                        help="run the (first) daemon under py-spy and write its speedscope profile here")
    parser.add_argument("--pin", action="store_true",
                        help="the daemon on CPU 0 and the exchange, redis-server and the harness on CPU 1")
    parser.add_argument("--name", default="", help="appended to the report's file name (<date>-<host>[-name].md)")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = [soak(args.symbols, 60.0 if args.quick else args.minutes * 60, work,
                     history_minutes=args.history_minutes, profile=args.profile, pin=args.pin)]
        print(f"{args.symbols} symbols: {summarize(runs[0])['cycle_s_p99']:.1f} ms p99", flush=True)
        if args.scaling and not args.quick:
            for n in (int(x) for x in args.scaling.split(",")):
                try:
                    runs.append(soak(n, args.seconds, work, history_minutes=args.history_minutes))
                except (OSError, subprocess.SubprocessError) as exc:  # a point that fails is reported, not fatal
                    log_tail = (work / f"daemon-{n}.log").read_text(errors="replace").splitlines()[-40:]
                    print(f"{n} symbols: failed: {exc!r}; the daemon's log ends:", *log_tail, sep="\n", flush=True)
                    continue
                print(f"{n} symbols: {summarize(runs[-1])['cycle_s_p99']:.1f} ms p99", flush=True)
        value_bytes = int(summarize(runs[0])["value_bytes_mean"])
        extra = {"redis_benchmark_set_per_s": redis_benchmark(work, value_bytes), "value_bytes": value_bytes,
                 "sqlite_executemany_rows_per_s": sqlite_rate(work)}
        extra.update(naive_cycle_ms(args.symbols, work))
    summaries = sorted((summarize(r) for r in runs), key=lambda x: x["symbols"])
    stem = f"{dt.date.today()}-{socket.gethostname()}" + ("-quick" if args.quick else "") + (
        f"-{args.name}" if args.name else "")
    # the figures first: a failing plot must not lose a half-hour run
    (out_dir / f"{stem}.json").write_bytes(orjson.dumps({"summaries": summaries, "extra": extra},
                                                        option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    images = plots(runs, summaries, out_dir, stem)
    text = report(summaries, extra, images, " ".join(sys.argv[1:]), runs)
    (out_dir / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
