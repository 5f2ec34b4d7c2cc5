"""Command line:

    python -m sidecar run [--symbols A,B] [--universe U]... [--http-port N]   the daemon, until SIGINT/SIGTERM
    python -m sidecar bootstrap [--symbols A,B] [--universe U]... [--days N]  fetch history (resumes a cut-off run)
    python -m sidecar history [--symbols A,B] [--universe U]... [--timeframes 1d,1h,5m,1m] [--years N | --days N]
                                                                               each timeframe as far back as its source
                                                                               serves it, with dividends and splits
    python -m sidecar backfill [--symbols A,B] [--universe U]... [--days N]   find gaps against the calendar, fill them
    python -m sidecar status [--symbols A,B] [--universe U]... [--days N]     what is stored, per symbol, as JSON
    python -m sidecar symbols [--symbols A,B] [--universe U]... [--type etf] [--refresh]
                                                                               the symbols table (type, name, fund size), as JSON
    python -m sidecar earnings [--symbols A,B] [--universe U]... [--days N]   releases ahead (synced when due), as JSON
    python -m sidecar export --out DIR [--symbols A,B] [--universe U]... [--timeframes 1h,1d] [--start D] [--end D]
                             [--features] [--adjusted] [--verify-no-lookahead]  a Parquet training set, JSON summary
    python -m sidecar universes                                                every universe and its symbols, as JSON
    python -m sidecar settings [--markdown]                                    every setting with its default

`--universe` may be given several times and with `--symbols`: the daemon follows them all.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvloop
from tqdm import tqdm

from . import universes
from .errors import SettingsError, StoreError, SymbolError
from .reference import parse_type
from .setting_docs import render_env_example, render_markdown
from .settings import Settings
from .timeframes import parse_timeframes


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (flags override SIDECAR_* settings)."""
    parser = argparse.ArgumentParser(prog="python -m sidecar", description="Market-data sidecar daemon.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon until SIGINT/SIGTERM")
    run.add_argument("--symbols", help="comma-separated symbols (overrides SIDECAR_SYMBOLS)")
    run.add_argument("--http-port", help="HTTP port (overrides SIDECAR_HTTP_PORT)")
    _universe_flag(run)
    for name, text in (("bootstrap", "fetch history for the symbols (resumes an earlier run) and exit"),
                       ("backfill", "find gaps against the market calendar, fetch them again, and exit"),
                       ("status", "print what is stored per symbol (rows, first and last bar, gaps) as JSON")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--symbols", help="comma-separated symbols (default: SIDECAR_SYMBOLS)")
        cmd.add_argument("--days", type=float, help="how many days back (default: the matching setting)")
        _universe_flag(cmd)
    hist = sub.add_parser("history", help="fetch each timeframe as far back as its source serves it (within "
                                          "--years/--days), with dividends and splits; resumes a cut-off run")
    hist.add_argument("--symbols", help="comma-separated symbols (default: SIDECAR_SYMBOLS)")
    hist.add_argument("--timeframes", default="1d,1h,5m,1m", help="comma-separated timeframes (default: 1d,1h,5m,1m)")
    span = hist.add_mutually_exclusive_group()
    span.add_argument("--years", type=float, help="at most this many years back (default: each source's reach)")
    span.add_argument("--days", type=float, help="at most this many days back")
    _universe_flag(hist)
    symbols = sub.add_parser("symbols", help="print the symbols table for the symbols (fetched when missing or "
                                             "a day old) as JSON")
    symbols.add_argument("--symbols", help="comma-separated symbols (default: SIDECAR_SYMBOLS)")
    symbols.add_argument("--type", help="only this instrument type (equity, etf, etn, fund, index, fx, crypto, future)")
    symbols.add_argument("--refresh", action="store_true", help="fetch every symbol again first")
    _universe_flag(symbols)
    calendar = sub.add_parser("earnings", help="print the releases of the symbols within --days (default "
                                               "SIDECAR_EARNINGS_DAYS) as JSON, syncing the calendar when due")
    calendar.add_argument("--symbols", help="comma-separated symbols (default: SIDECAR_SYMBOLS)")
    calendar.add_argument("--days", type=int, help="how many calendar days ahead")
    _universe_flag(calendar)
    exp = sub.add_parser("export", help="write the stored bars (and features) as a Hive-partitioned Parquet dataset")
    exp.add_argument("--out", required=True, help="the dataset's directory")
    exp.add_argument("--symbols", help="comma-separated symbols (default: SIDECAR_SYMBOLS)")
    exp.add_argument("--timeframes", help="comma-separated timeframes (default: SIDECAR_TIMEFRAMES)")
    exp.add_argument("--start", help="first bar open, YYYY-MM-DD or ISO-8601, UTC (default: the first stored)")
    exp.add_argument("--end", help="bars opening before this, as --start (default: now)")
    exp.add_argument("--features", action="store_true", help="add every indicator output and `warm`")
    exp.add_argument("--adjusted", action="store_true",
                     help="add the bars adjusted for the stored dividends and splits (adj_* columns)")
    exp.add_argument("--verify-no-lookahead", action="store_true",
                     help="also prove on the first symbols that no feature reads a later bar")
    _universe_flag(exp)
    cluster = sub.add_parser("cluster", help="the cluster as Redis holds it (SIDECAR_CLUSTER members)")
    cluster.add_argument("action", choices=["status"],
                         help="status: members, partition owners and tokens, refused writes, shared budget use")
    sub.add_parser("universes", help="print every named universe (shipped and SIDECAR_UNIVERSES_DIR) as JSON")
    settings = sub.add_parser("settings", help="print every setting with its default (the text of .env.example)")
    settings.add_argument("--markdown", action="store_true", help="as the README's tables instead")
    return parser


def _universe_flag(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--universe", action="append", metavar="NAME",
                     help="a named universe to include (repeatable; overrides SIDECAR_UNIVERSE)")


async def _with_parts(settings: Settings, work: Callable[[Any], Awaitable[dict]]) -> dict:
    """Open SQLite and the fetchers (no loop, no Redis, no HTTP), run `work`, close them. The
    work goes through the same guarded sources as the daemon's (SIDECAR_SOURCES, budgets)."""
    from .app.daemon import Sidecar

    sc = Sidecar(settings, handle_signals=False)
    await sc.sqlite.start()
    for fetcher in (sc.fetcher, *sc.fallbacks):
        await fetcher.start()
    try:
        return await work(sc)
    finally:
        await sc.sqlite.flush()
        for fetcher in (sc.fetcher, *sc.fallbacks):
            await fetcher.close()
        await sc.sqlite.close()
        await sc.redis.close()


async def _bootstrap(sc: Any, days: float, timeframes: tuple[str, ...] | None = None) -> dict:
    """The bootstrap (or with `timeframes`, the history load): windows fetched through the
    guarded sources, then the higher timeframes rebuilt from what came in."""
    boot = sc.bootstrapper
    requests = sc.metrics.by_label("sidecar_fetch_seconds_count", "source")
    what = "history" if timeframes else "bootstrap"
    report = await _shown(boot.run(sc.infos, days, timeframes), len(sc.infos) * len(boot.plan(days, timeframes)),
                          "window", f"{what} of {len(sc.infos)} symbols, {days:g} days",
                          lambda: sum(done for done, _ in boot.progress.values()))
    t0 = time.perf_counter()
    await sc.reaggregator.run(sc.infos, "bootstrapped")  # the higher timeframes of what came in
    made = {k: v - requests.get(k, 0.0) for k, v in sc.metrics.by_label("sidecar_fetch_seconds_count", "source").items()}
    rows = sum(report.rows.values())
    return {"symbols": report.symbols, "windows_fetched": report.windows, "windows_already_done": report.skipped,
            "windows_failed": report.failed, "rows": report.rows, "actions": len(report.actions),
            "requests": {k: int(v) for k, v in made.items() if v},
            "seconds": round(report.seconds, 2), "rows_per_second": round(rows / max(report.seconds, 1e-9)),
            "reaggregation_seconds": round(time.perf_counter() - t0, 2)}


async def _history(sc: Any, timeframes: tuple[str, ...], days: float | None) -> dict:
    """Each timeframe the first source serves, as far back as it does (within `days`); the
    others are built from finer bars afterwards."""
    reach = sc.bootstrapper.reach
    served = tuple(tf for tf in timeframes if tf in reach)
    if not served:
        raise ValueError(f"no timeframe of {','.join(timeframes)} is served as history; served: {','.join(reach)}")
    deepest = max(reach[tf][0] for tf in served) / 86400
    summary = await _bootstrap(sc, deepest if days is None else min(days, deepest), served)
    return {**summary, "timeframes": list(served), "built_from_finer_bars": [tf for tf in timeframes if tf not in reach],
            "reach_days": {tf: round(reach[tf][0] / 86400, 1) for tf in served}}


async def _backfill(sc: Any, days: float) -> dict:
    await _shown(sc.backfiller.run(sc.infos, days), len(sc.infos), "symbol", f"gap scan over {days:g} days",
                 lambda: sc.backfiller.progress[0])
    return sc.backfiller.health()


async def _shown(work: Awaitable[Any], total: int, unit: str, desc: str, done: Callable[[], int]) -> Any:
    """Await `work`, with a progress bar on a terminal (`done()` of `total`); elsewhere the
    log lines are the progress and stdout keeps only the JSON summary."""
    task = asyncio.ensure_future(work)
    if sys.stderr.isatty():
        with tqdm(total=total, unit=unit, file=sys.stderr, desc=desc) as bar:
            while not task.done():
                await asyncio.wait({task}, timeout=0.2)
                bar.update(done() - bar.n)
    return await task


async def _status(sc: Any, days: float) -> dict:
    out = {}
    start, end = sc.backfiller.settled_window(days)  # the window `backfill` scans, so the two agree
    for info in sc.infos:
        rows = await sc.sqlite.summary(info.symbol)
        missing = await sc.backfiller.missing(info, start, end)
        plan = sc.bootstrapper.plan(sc.settings.bootstrap_days)
        done = await sc.sqlite.bootstrap_done(info.symbol)
        out[info.symbol] = {"asset_class": str(info.asset_class), "timeframes": rows,
                            "bootstrap_windows_done":
                                f"{sum(done.get((w.timeframe, w.cell), w.start) >= w.end for w in plan)}/{len(plan)}",
                            f"missing_minutes_last_{days:g}_days": int(len(missing))}
    return {"window": [start, end], "symbols": out}


async def _symbols(sc: Any, kind: str | None, refresh: bool) -> dict:
    await sc.reference.start()
    await sc.reference.refresh([i for i in sc.infos if refresh or sc.reference.due(i.symbol)])
    return {"symbols": sc.reference.listing([i.symbol for i in sc.infos], kind)}


async def _earnings(sc: Any, days: int) -> dict:
    ref = sc.reference
    await ref.start()
    await ref.sync_if_due()
    return {"days": days, "source": ref.calendar["source"], "earnings": ref.upcoming(days, [i.symbol for i in sc.infos])}


def _export(settings: Settings, args: argparse.Namespace) -> dict:
    from . import dataset

    timeframes = parse_timeframes(args.timeframes) if args.timeframes else settings.timeframes
    start = dataset.parse_time(args.start) if args.start else 0
    end = dataset.parse_time(args.end) if args.end else int(time.time()) + 1
    bar = tqdm(total=len(timeframes) * len(settings.symbols), unit="symbol", file=sys.stderr,
               desc=f"export of {len(settings.symbols)} symbols") if sys.stderr.isatty() else None
    db = settings.store_url or settings.db_path  # a cluster's PostgreSQL store, else the SQLite file
    report = dataset.export(db, Path(args.out), settings.symbols, timeframes, start, end,
                            features=args.features, adjusted=args.adjusted, config=settings.feature_periods,
                            progress=None if bar is None else bar.update)
    if bar is not None:
        bar.close()
    out = {"out": args.out, "start": start, "end": end, **report.summary()}
    if args.verify_no_lookahead:
        config = settings.feature_periods
        checked = {}
        for tf in timeframes:
            series = dataset.load(db, settings.symbols[:20], tf, end)
            depth = int(np.diff(series.offsets).max()) if series.symbols else 0
            cuts = sorted({c for c in (0, 1, 10, 100, 300, 600, depth // 2, depth - 2) if 0 <= c < depth})
            bad = dataset.check_no_lookahead(series, functools.partial(dataset.replay, timeframe=tf, config=config),
                                             cuts, config.outputs)
            checked[tf] = {"symbols": len(series.symbols), "cuts": cuts, "differences": bad[:20]}
        out["no_lookahead"] = {"ok": all(not c["differences"] for c in checked.values()), "checked": checked}
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for a configuration error)."""
    args = build_parser().parse_args(argv)
    if args.command == "settings":
        print(render_markdown() if args.markdown else render_env_example(), end="")
        return 0
    try:
        settings = Settings.from_env().with_overrides(
            symbols=getattr(args, "symbols", None), http_port=getattr(args, "http_port", None),
            universe=",".join(args.universe) if getattr(args, "universe", None) else None)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "universes":
        user_dir = Path(settings.universes_dir) if settings.universes_dir else None
        try:
            listing = {name: list(universes.members(name, user_dir)) for name in universes.known(user_dir)}
        except ValueError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        sys.stdout.write(orjson.dumps(listing, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    logging.basicConfig(level=settings.log_level, stream=sys.stdout if args.command == "run" else sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from .app import Sidecar  # after logging is set up

    try:
        if args.command == "run":
            return uvloop.run(Sidecar(settings).run())
        if args.command == "cluster":
            from .cluster.status import cluster_status

            result = uvloop.run(cluster_status(settings))
            sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
        if args.command == "export":
            result = _export(settings, args)
            sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
        if args.command in ("symbols", "earnings"):
            if args.command == "symbols":
                kind = parse_type(args.type) if args.type else None
                job: Callable[[Any], Awaitable[dict]] = lambda sc: _symbols(sc, kind, args.refresh)  # noqa: E731
            else:
                job = lambda sc: _earnings(sc, args.days if args.days is not None else settings.earnings_days)  # noqa: E731
            sys.stdout.write(orjson.dumps(uvloop.run(_with_parts(settings, job)), option=orjson.OPT_INDENT_2).decode()
                             + "\n")
            return 0
        if args.command == "history":
            timeframes = parse_timeframes(args.timeframes, with_base=False)
            span = args.years * 365.25 if args.years is not None else args.days
            result = uvloop.run(_with_parts(settings, lambda sc: _history(sc, timeframes, span)))
            sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
        days = args.days if args.days is not None else {
            "bootstrap": settings.bootstrap_days, "backfill": settings.gap_scan_days, "status": settings.gap_scan_days,
        }[args.command]
        work = {"bootstrap": _bootstrap, "backfill": _backfill, "status": _status}[args.command]
        result = uvloop.run(_with_parts(settings, lambda sc: work(sc, days)))
    except (SettingsError, SymbolError, ValueError, StoreError) as exc:  # a setting that only fails when used
        # (a path, a port, a server)
        print(f"start-up failed: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
