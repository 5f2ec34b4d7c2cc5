"""Training sets: the Parquet export round-trips the store exactly (SQLite, and the PostgreSQL
store of a cluster), its features equal TA-Lib once `warm` (OBV from the recorded origin), and
no feature reads a later bar (a leaking one is caught)."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import asyncpg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from sidecar import dataset
from sidecar.bars import Bar
from sidecar.clock import ManualClock
from sidecar.features import FeatureConfig
from sidecar.stores import PostgresStore, SQLiteStore

from .conftest import ROOT, subprocess_env
from .talib_oracle import talib_outputs

T0 = 1_767_225_600  # 2026-01-01 00:00 UTC
LENGTHS = {"BTCUSD": 1000, "ETHUSD": 760}  # ragged on purpose: the replay is vectorized by bar index


def _bars(symbol: str, n: int, seed: int) -> list[Bar]:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    opens = np.r_[close[0], close[:-1]]
    high = np.maximum(opens, close) * (1 + rng.uniform(0, 0.005, n))
    low = np.minimum(opens, close) * (1 - rng.uniform(0, 0.005, n))
    volume = rng.uniform(10, 1000, n).round(3)
    start = T0 + (1000 - n) * 3600
    return [Bar(symbol, "1h", start + i * 3600, float(opens[i]), float(high[i]), float(low[i]), float(close[i]),
                float(volume[i]), "yahoo") for i in range(n)]


@pytest.fixture(params=["sqlite", "postgres"])
async def db(tmp_path: Path, request: pytest.FixtureRequest) -> Path | str:
    """The bars written by the daemon's store: a SQLite file, or a PostgreSQL database's URL."""
    if request.param == "postgres":
        url: Path | str = request.getfixturevalue("postgres_url")
        store: SQLiteStore | PostgresStore = PostgresStore(url=str(url), clock=ManualClock())
    else:
        url = tmp_path / "bars.db"
        store = SQLiteStore(path=url, synchronous="NORMAL", clock=ManualClock())
    await store.start()
    for k, (sym, n) in enumerate(LENGTHS.items()):
        store.add(_bars(sym, n, k))
    await store.flush()
    await store.close()
    return url


_STORED = ("SELECT ts, open, high, low, close, volume, flags, source FROM bars WHERE symbol = {} AND timeframe = '1h' "
           "ORDER BY ts")


def _where(db: Path | str) -> dict[str, str]:
    """The setting naming the database, as an operator sets it."""
    return {"SIDECAR_STORE_URL": db} if isinstance(db, str) else {"SIDECAR_DB_PATH": str(db)}


def _stored(db: Path | str, symbol: str) -> list[tuple]:
    """The stored rows, read with each database's own driver (not the export's)."""
    if isinstance(db, str):
        async def fetch() -> list[tuple]:
            conn = await asyncpg.connect(db)
            try:
                return [tuple(r) for r in await conn.fetch(_STORED.format("$1"), symbol)]
            finally:
                await conn.close()

        return asyncio.run(fetch())
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(_STORED.format("?"), (symbol,)).fetchall()


def test_the_export_round_trips_and_its_features_equal_talib_once_warm(db: Path | str, tmp_path: Path) -> None:
    out = tmp_path / "set"
    start = T0 + 500 * 3600  # later than either origin: features still replay from the first stored bar
    report = dataset.export(db, out, list(LENGTHS), ["1h"], start, T0 + 2000 * 3600, features=True)
    assert report.files == 2 and report.rows == 2 * 500
    cfg = FeatureConfig()
    frame = dataset.read(out)
    assert list(frame["symbol"].unique()) == ["BTCUSD", "ETHUSD"]
    for sym in LENGTHS:
        rows = frame[frame["symbol"] == sym]
        stored = _stored(db, sym)
        kept = [r for r in stored if r[0] >= start]
        got = list(zip([int(t.timestamp()) for t in rows["ts"]], *(rows[c].tolist() for c in (
            "open", "high", "low", "close", "volume", "flags", "source")), strict=True))
        assert got == kept  # bars exactly as stored
        assert {int(t.timestamp()) for t in rows["origin_ts"]} == {stored[0][0]}  # where OBV's sum starts
        h, lo, c, v = (np.array([r[i] for r in stored]) for i in (2, 3, 4, 5))  # from the recorded origin
        want = talib_outputs(h, lo, c, v, cfg, hv_scale=math.sqrt(24 * 365))
        tail = len(stored) - len(kept)
        warm = rows["warm"].to_numpy()
        index = np.arange(tail, len(stored))
        assert (warm == (index >= max(w for w in cfg.warmups if w >= 0))).all()
        assert warm.any() and not warm.all()  # the first exported rows are still warming up
        for name in cfg.outputs:
            if name == "vwap":  # restarts each UTC day: TA-Lib's VWAP has no sessions (the parity tests cover it)
                continue
            exp, act = want[name][tail:][warm], rows[name].to_numpy()[warm]
            assert np.allclose(act, exp, rtol=1e-9, atol=1e-9), name
    # plain pyarrow and pandas open it too
    assert pq.read_table(out / "timeframe=1h" / "symbol=BTCUSD" / "part-0.parquet").num_rows == 500
    assert len(pd.read_parquet(out)) == 1000
    some = dataset.read(out, symbols=["ETHUSD"], start=start + 10 * 3600, end=start + 20 * 3600, columns=["close"])
    assert list(some.columns) == ["timeframe", "symbol", "ts", "close"] and len(some) == 10


def test_no_feature_reads_a_later_bar_and_a_leaking_one_is_caught(db: Path | str) -> None:
    cfg = FeatureConfig()
    series = dataset.load(db, list(LENGTHS), "1h")
    cuts = [0, 1, 30, 250, 600, 758]

    def engine(s: dataset.Series) -> np.ndarray:
        return dataset.replay(s, "1h", cfg)

    assert dataset.check_no_lookahead(series, engine, cuts, cfg.outputs) == []

    def leaking(s: dataset.Series) -> np.ndarray:  # "normalised" by the whole frame's mean close
        out = engine(s)
        out[0] = s.values[3] / np.mean(s.values[3])
        return out

    bad = dataset.check_no_lookahead(series, leaking, cuts, cfg.outputs)
    assert {(name, cut) for _, name, cut in bad} >= {("sma_20", c) for c in cuts[:-1]}
    assert {name for _, name, _ in bad} == {"sma_20"}


def test_the_export_command_writes_the_set_and_verifies_it(db: Path | str, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "export", "--out", str(out), "--symbols", "BTCUSD,ETHUSD",
         "--timeframes", "1h", "--start", "2026-01-20", "--end", "2026-02-10T12:00:00+00:00", "--features",
         "--verify-no-lookahead"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=subprocess_env(**_where(db)))
    assert result.returncode == 0, result.stderr
    import orjson

    doc = orjson.loads(result.stdout)
    assert doc["no_lookahead"]["ok"] and doc["files"] == 2
    assert doc["rows"] == 2 * ((T0 + 40 * 86400 + 12 * 3600 - (T0 + 19 * 86400)) // 3600)
    bad = subprocess.run([sys.executable, "-m", "sidecar", "export", "--out", str(out), "--start", "yesterday"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, env=subprocess_env(**_where(db)))
    assert bad.returncode == 2 and "expected YYYY-MM-DD or ISO-8601" in bad.stderr
