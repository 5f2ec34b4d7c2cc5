"""Two cluster members splitting 2N symbols beside one single daemon with N, all at 1 Hz in
quotes mode on this machine, in the same run, so the ratio of their cycle times is what the
cluster costs (the coordination, fenced writes per partition, PostgreSQL) and not the machine.

    .venv/bin/python -m bench.cluster --symbols 10000 --minutes 10     (the issue's target run)
    .venv/bin/python -m bench.cluster --symbols 2000 --minutes 1       (quick)
    .venv/bin/python -m bench.cluster --symbols 10000 --baseline before   (the single daemon first, alone)
    .venv/bin/python -m bench.cluster --symbols 10000 --baseline none     (the members alone, no ratio)

Real processes: the exchange, one redis-server (the members' keys and the single daemon's under
another prefix), a private PostgreSQL server (the members' store; the single daemon keeps
SQLite, as one machine does), two members and the single daemon. Each daemon writes one JSON
line per cycle (SIDECAR_CYCLE_TRACE); CPU and RSS come from /proc. The report goes to
bench/results/<date>-<host>-cluster.json, with each daemon's stages (p50) and the exchange's and
Redis's CPU, so a missed target says what holds it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import redis

from sidecar.cluster.partitions import partition_of

from .quotes import universe
from .servers import free_port, postgres_server, quotes_env, redis_server, save_report, start_exchange, stop
from .soak import _proc_stats, _wait_http

PARTITIONS = 64


def _daemon(name: str, work: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    trace = work / f"trace-{name}.jsonl"
    log = (work / f"daemon-{name}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "run"], cwd=work, stdout=log, stderr=subprocess.STDOUT,
                            env={**env, "SIDECAR_HTTP_PORT": str(port), "SIDECAR_CYCLE_TRACE": str(trace)})
    log.close()
    return proc, port, trace


def _lines(trace: Path) -> list[bytes]:
    return trace.read_bytes().splitlines() if trace.exists() else []


def recent_cycles(trace: Path, n: int = 5) -> list[dict]:
    """A daemon's last `n` cycle trace lines."""
    return [orjson.loads(x) for x in _lines(trace)[-n:]]


def caught_up(recent: list[dict], n: int = 5) -> bool:
    """Whether a daemon's last `n` cycles followed symbols (a daemon's first cycles have none, and
    so no history requests) and none of their history was asked for or in flight."""
    return len(recent) == n and all(c["symbols"] > 0 and c["history_requests"] == 0
                                    and not c.get("history_in_flight") for c in recent)


def _health(port: int) -> dict:
    """A daemon's /health document (503 when degraded or down: the body says why)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as resp:  # noqa: S310 - loopback
            return dict(orjson.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return dict(orjson.loads(exc.read()))


STAGES = ("fetch", "parse", "build", "validate", "features", "timeframes", "redis", "sqlite_buffer", "scan")


def run(n: int, seconds: float, work: Path, warmup_limit: float = 420.0, baseline: str = "beside") -> dict[str, object]:
    """Start everything, wait for every daemon's catch-up, measure `seconds`; the figures. The
    single daemon runs beside the members (`baseline="beside"`: the same load for both, so the
    ratio is the cluster's own cost) or alone before them (`"before"`: the members then have the
    machine to themselves, as two shards of 10,000 would)."""
    with redis_server(work) as redis_url, postgres_server(Path(tempfile.mkdtemp(prefix="sidecar-bench-pg-"))) as pg:
        ex_port = free_port()
        names = universe(2 * n)
        (work / "all.txt").write_text("\n".join(names))
        (work / "single.txt").write_text("\n".join(names[:n]))
        common = quotes_env(ex_port, redis_url)
        specs = {
            "single": {**common, "SIDECAR_SYMBOLS": f"@{work / 'single.txt'}", "SIDECAR_REDIS_PREFIX": "single",
                       "SIDECAR_DB_PATH": str(work / "s.db")},
            **{m: {**common, "SIDECAR_SYMBOLS": f"@{work / 'all.txt'}", "SIDECAR_CLUSTER": "true", "SIDECAR_SHARD_ID": m,
                   "SIDECAR_PARTITIONS": str(PARTITIONS), "SIDECAR_STORE_URL": pg} for m in ("member-a", "member-b")},
        }
        phases = {"before": [["single"], ["member-a", "member-b"]], "none": [["member-a", "member-b"]]}.get(
            baseline, [list(specs)])
        client = redis.Redis.from_url(redis_url)
        redis_pid = int(client.info("server")["process_id"])
        out: dict[str, object] = {"symbols_per_daemon": n, "partitions": PARTITIONS, "baseline": baseline}
        for phase in phases:
            # Each phase starts from the same state: a fresh exchange (its caches and records grow
            # with what it served) and an empty Redis, so the later phase does not pay for the earlier.
            client.flushall()
            exchange = start_exchange(ex_port)
            daemons = {name: _daemon(name, work, specs[name]) for name in phase}
            try:
                out.update(_measure(daemons, names, n, seconds, warmup_limit, exchange.pid, redis_pid,
                                    f"{'+'.join(phase)}_" if baseline != "beside" else ""))
            finally:
                stop((proc for proc, _port, _trace in daemons.values()), 60)
                exchange.terminate()
                exchange.wait()
        if "single" in out:
            single = out["single"]["cycle_p99_ms"]  # type: ignore[index]
            out["member_p99_vs_single"] = {m: round(out[m]["cycle_p99_ms"] / single, 2)  # type: ignore[index]
                                           for m in ("member-a", "member-b")}
        return out


def _measure(daemons: dict[str, tuple[subprocess.Popen[bytes], int, Path]], names: list[str], n: int, seconds: float,
             warmup_limit: float, exchange_pid: int, redis_pid: int, label: str) -> dict[str, object]:
    """Wait for the daemons' catch-up, then measure `seconds`: per daemon its cycles, stages
    (p50), CPU and RSS; the exchange's and Redis's CPU under `label`."""
    for name, (proc, port, _trace) in daemons.items():
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                text = daemons[name][2].with_name(f"daemon-{name}.log").read_text()
                raise SystemExit(f"{name} exited:\n{text[text.find('ERROR'):][:4000]}")
            try:
                _wait_http(f"http://127.0.0.1:{port}/health", 0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    t0 = time.time()
    first_minute = int(t0) // 60
    while time.time() - t0 < warmup_limit:  # every daemon caught up, past a minute boundary
        time.sleep(1)
        ready = []
        for _proc, _port, trace in daemons.values():
            recent = recent_cycles(trace)
            ready.append(caught_up(recent) and int(recent[-1]["t"]) // 60 > first_minute)
        if all(ready):
            break
    warmup = time.time() - t0
    marks = {name: len(_lines(trace)) for name, (_p, _port, trace) in daemons.items()}
    pids = {name: proc.pid for name, (proc, _port, _trace) in daemons.items()}
    pids["exchange"], pids["redis"] = exchange_pid, redis_pid
    start = {k: _proc_stats(p) for k, p in pids.items()}
    t_start = time.time()
    time.sleep(seconds)
    end = {k: _proc_stats(p) for k, p in pids.items()}
    span = time.time() - t_start
    members = [m for m in daemons if m != "single"]
    health = {m: _health(daemons[m][1]).get("cluster", {}) for m in members}
    owned = {m: [int(p) for p in h.get("owned", {})] for m, h in health.items()}
    out: dict[str, object] = {f"{label}seconds": round(span, 1), f"{label}warmup_s": round(warmup, 1)}
    for name, (_proc, _port, trace) in daemons.items():
        cycles = [orjson.loads(x) for x in _lines(trace)[marks[name]:]]
        ms = np.array([c["cycle_s"] for c in cycles]) * 1000
        closing = np.array([c["closed"] > 0 for c in cycles], dtype=bool)
        followed = n if name == "single" else sum(1 for s in names if partition_of(s, PARTITIONS) in owned[name])
        out[name] = {"symbols": followed, "cycles": len(cycles),
                     "fenced_writes": health.get(name, {}).get("fenced_writes"),
                     "overruns": cycles[-1]["overruns"] - cycles[0]["overruns"] if cycles else None,
                     **{f"cycle_p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)},
                     "cycle_max_ms": round(float(ms.max()), 1),
                     # the cycles that closed a minute carry its bars through every stage and the store
                     "closing_cycle_p50_ms": round(float(np.median(ms[closing])), 1) if closing.any() else None,
                     "slow_cycles_closing": int(closing[ms > 1000].sum()), "slow_cycles": int((ms > 1000).sum()),
                     "history_requests": sum(c["history_requests"] for c in cycles),
                     # built minutes left to the catch-up: a second not sampled, a sample after its second
                     **{k: cycles[-1].get(k, 0) - cycles[0].get(k, 0) if cycles else None for k in ("unsampled", "late")},
                     "redis_p99_ms": round(float(np.percentile([c["redis"] for c in cycles], 99)) * 1000, 1),
                     "stages_p50_ms": {k: round(float(np.median([c.get(k, 0.0) for c in cycles])) * 1000, 1)
                                       for k in STAGES},
                     "cpu_pct": round(100 * (end[name][0] - start[name][0]) / span, 1),
                     "rss_mb": round(end[name][1] / 2**20, 1)}
    for part in ("exchange", "redis"):
        out[f"{label}{part}_cpu_pct"] = round(100 * (end[part][0] - start[part][0]) / span, 1)
    return out


def main() -> None:
    """Run, print and save the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=10_000, help="symbols per daemon (the members split twice this)")
    parser.add_argument("--minutes", type=float, default=10.0, help="measured minutes, after the catch-up")
    parser.add_argument("--baseline", choices=("beside", "before", "none"), default="beside",
                        help="the single daemon runs beside the members, alone before them, or not at all")
    parser.add_argument("--keep", type=Path, help="copy each daemon's cycle trace and log into this directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-cluster-") as tmp:
        report = run(args.symbols, args.minutes * 60, Path(tmp), baseline=args.baseline)
        if args.keep is not None:  # the per-cycle record, to see what the slow cycles were made of
            args.keep.mkdir(parents=True, exist_ok=True)
            for path in [*Path(tmp).glob("trace-*.jsonl"), *Path(tmp).glob("daemon-*.log")]:
                shutil.copy(path, args.keep / path.name)
    save_report(report, "cluster", f"python -m bench.cluster --symbols {args.symbols} --minutes {args.minutes:g}"
                                   f" --baseline {args.baseline}")


if __name__ == "__main__":
    main()
