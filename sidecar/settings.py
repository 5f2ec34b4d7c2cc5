"""One settings object, read once at start-up from the environment and `.env`, validated,
and passed down explicitly. Every setting is an environment variable prefixed `SIDECAR_`.

Each field carries its variable name, its parser and a one-line meaning in its metadata;
`.env.example` and the README's table are checked against these fields by the tests. What
each kind of value may be is in `setting_parsers`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import orjson
from dotenv import dotenv_values

from . import setting_parsers as parse
from . import universes
from .errors import SettingsError
from .features.config import FeatureConfig
from .scanner import DEFAULT_RULES
from .setting_parsers import redact_url
from .symbols import DEFAULT_SYMBOLS, AssetClass
from .timeframes import ALL as ALL_TIMEFRAMES
from .timeframes import DayStart, day_start, parse_day_starts, parse_timeframes
from .universes import parse_names as parse_universe_names

PREFIX = "SIDECAR_"
_BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


def _setting(name: str, default: Any, parser: parse.Parser, help: str) -> Any:
    return field(default=default, metadata={"env": PREFIX + name, "parse": parser, "help": help})


class _FromEnv:
    """Shared loading for the settings dataclasses."""

    __slots__ = ()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")
    ) -> Any:
        """Build from `.env` (if present) overlaid with `environ`; raise SettingsError on a bad value."""
        values: dict[str, str] = {}
        if dotenv is not None and dotenv.is_file():
            values.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        unknown = sorted(k for k in values if k.startswith(PREFIX) and k not in ALL_SETTINGS)
        if unknown:
            raise SettingsError(unknown[0], "unknown setting (see .env.example for the list)")
        kwargs = {}
        for f in fields(cls):  # type: ignore[arg-type]
            env = f.metadata["env"]
            if env in values:
                try:
                    kwargs[f.name] = f.metadata["parse"](values[env])
                except ValueError as exc:
                    raise SettingsError(env, str(exc)) from None
        return cls(**kwargs)._finish(set(kwargs))

    def _finish(self, given: set[str]) -> Any:
        """Settings that depend on others, once all are read (`given`: the fields set)."""
        return self

    def with_overrides(self, **raw: str | None) -> Any:
        """A copy with some fields replaced from raw strings (CLI flags), parsed like env values."""
        meta = {f.name: f.metadata for f in fields(self)}  # type: ignore[arg-type]
        changes = {}
        for name, value in raw.items():
            if value is not None:
                try:
                    changes[name] = meta[name]["parse"](value)
                except ValueError as exc:
                    raise SettingsError(meta[name]["env"], str(exc)) from None
        return replace(self, **changes)._finish(set(changes))  # type: ignore[type-var]


@dataclass(slots=True, frozen=True)
class ProviderSettings:
    """One provider's connection and plan, the same shape for all four (from its
    SIDECAR_<PROVIDER>_* settings and SIDECAR_SOURCE_DELAYS)."""

    name: str
    base_url: str
    api_key: str = field(repr=False)  # empty: none needed (Yahoo) or the source is disabled
    rate_per_min: int = 0  # requests (Twelve Data: credits) per minute, never exceeded; 0: no limit
    rate_per_day: int = 0  # per UTC day; 0: no limit
    delay_s: float = 0.0  # the plan's delay: its bars are as of this long ago


@dataclass(slots=True, frozen=True)
class Settings(_FromEnv):
    """Everything the daemon can be told, with defaults that run against the local exchange."""

    symbols: tuple[str, ...] = _setting(
        "SYMBOLS", DEFAULT_SYMBOLS, parse.symbol_list,
        "comma-separated canonical symbols to follow, or @path: a file of them (commas or one per line)")
    universe: tuple[str, ...] = _setting(
        "UNIVERSE", (), parse_universe_names,
        "named universes to follow, e.g. dev_top_10,dev_etfs (with SIDECAR_SYMBOLS: both; see README)")
    universes_dir: str = _setting(
        "UNIVERSES_DIR", "", parse.text, "a directory of your own universes, <name>.txt, one symbol a line")
    cycle_interval_s: float = _setting(
        "CYCLE_INTERVAL_S", 1.0, parse.number(0.05, 60), "seconds between cycles (deadline-scheduled)")
    fetch_timeout_s: float = _setting(
        "FETCH_TIMEOUT_S", 0.8, parse.number(0.05, 60), "per-request timeout for a source")
    history_timeout_s: float = _setting(
        "HISTORY_TIMEOUT_S", 30.0, parse.number(1, 600), "per-request timeout for bootstrap and backfill windows")
    lookback_minutes: int = _setting(
        "LOOKBACK_MINUTES", 120, parse.integer(1, 10080),
        "how far back the first fetch of a symbol reaches after start-up")
    settle_s: float = _setting(
        "SETTLE_S", 5.0, parse.number(0, 3600),
        "a closed bar that ended less than this before the source's clock is fetched again once settled, "
        "and corrected if it moved")
    restart_overlap_minutes: int = _setting(
        "RESTART_OVERLAP_MINUTES", 5, parse.integer(0, 1440),
        "after a restart, minutes before the last stored bar fetched again (repairs revised bars)")
    bootstrap_days: float = _setting(
        "BOOTSTRAP_DAYS", 90.0, parse.number(0, 730),
        "history fetched in the background for a symbol with no stored bars (0: none)")
    retention_days: int = _setting(
        "RETENTION_DAYS", 90, parse.integer(1, 36500), "1m bars older than this are deleted (in small batches, once a day)")
    retention_higher: tuple[tuple[str, int], ...] = _setting(
        "RETENTION_HIGHER", (("5m", 730), ("15m", 730), ("1h", 3650), ("4h", 3650), ("1d", 36500)), parse.retention,
        "days each higher timeframe is kept, e.g. 5m=730,1h=3650,1d=36500 (a timeframe not named: kept forever)")
    gap_scan_days: float = _setting(
        "GAP_SCAN_DAYS", 2.0, parse.number(0, 90),
        "days back each gap scan compares stored bars with the calendar (0: no gap scans nor end-of-day checks)")
    backfill_interval_s: float = _setting(
        "BACKFILL_INTERVAL_S", 900.0, parse.number(10, 86400),
        "seconds between gap scans (also run at start-up and when a source recovers)")
    yahoo_base_url: str = _setting(
        "YAHOO_BASE_URL", "http://127.0.0.1:8700", parse.url("http", "https"),
        "Yahoo chart API base URL (the real one: https://query2.finance.yahoo.com)")
    yahoo_cookie_url: str = _setting(
        "YAHOO_COOKIE_URL", "", parse.optional_url,
        "where the quote endpoint's cookie comes from (empty: https://fc.yahoo.com for Yahoo, else the base URL's root)")
    live_mode: str = _setting(
        "LIVE_MODE", "chart", parse.choice("chart", "quotes"),
        "chart: one history request per symbol per cycle; quotes: batch quotes built into bars (thousands of symbols)")
    quote_batch: int = _setting(
        "QUOTE_BATCH", 200, parse.integer(1, 2000), "symbols per batch quote request (quotes mode)")
    catchup_per_cycle: int = _setting(
        "CATCHUP_PER_CYCLE", 200, parse.integer(1, 100_000),
        "quotes mode: history requests in flight at most, for symbols whose minutes the quotes cannot vouch for")
    yahoo_user_agent: str = _setting(
        "YAHOO_USER_AGENT", _BROWSER_UA, parse.text, "User-Agent sent to Yahoo (it refuses generic ones)")
    yahoo_rate_per_min: int = _setting(
        "YAHOO_RATE_PER_MIN", 0, parse.integer(0, 10_000_000), "requests per minute to Yahoo, never exceeded (0: no limit)")
    yahoo_rate_per_day: int = _setting(
        "YAHOO_RATE_PER_DAY", 0, parse.integer(0, 1_000_000_000), "requests per UTC day to Yahoo (0: no limit)")
    sources: tuple[str, ...] = _setting(
        "SOURCES", ("yahoo", "twelvedata", "polygon", "alphavantage"), parse.source_list,
        "sources in order of preference; each symbol falls back down the ones that serve it "
        "while one is failing, open or out of budget (a source without its API key is disabled)")
    source_delays: tuple[tuple[str, float], ...] = _setting(
        "SOURCE_DELAYS", (), parse.delays,
        "each source's plan delay, e.g. polygon=15m: its bars close by its delayed clock, /health shows it "
        "(empty: all real-time)")
    twelvedata_base_url: str = _setting(
        "TWELVEDATA_BASE_URL", "http://127.0.0.1:8700", parse.url("http", "https"),
        "Twelve Data base URL (the real one: https://api.twelvedata.com)")
    twelvedata_api_key: str = _setting(
        "TWELVEDATA_API_KEY", "", parse.text, "Twelve Data API key (empty: source disabled; never logged)")
    twelvedata_rate_per_min: int = _setting(
        "TWELVEDATA_RATE_PER_MIN", 8, parse.integer(0, 10_000_000),
        "Twelve Data credits per minute, never exceeded (0: no limit)")
    twelvedata_rate_per_day: int = _setting(
        "TWELVEDATA_RATE_PER_DAY", 800, parse.integer(0, 1_000_000_000), "Twelve Data credits per UTC day (0: no limit)")
    polygon_base_url: str = _setting(
        "POLYGON_BASE_URL", "http://127.0.0.1:8700", parse.url("http", "https"),
        "Polygon/Massive base URL (the real one: https://api.massive.com)")
    polygon_api_key: str = _setting(
        "POLYGON_API_KEY", "", parse.text, "Polygon API key (empty: source disabled; never logged)")
    polygon_rate_per_min: int = _setting(
        "POLYGON_RATE_PER_MIN", 5, parse.integer(0, 10_000_000), "Polygon requests per minute, never exceeded (0: no limit)")
    polygon_rate_per_day: int = _setting(
        "POLYGON_RATE_PER_DAY", 0, parse.integer(0, 1_000_000_000), "Polygon requests per UTC day (0: no limit)")
    alphavantage_base_url: str = _setting(
        "ALPHAVANTAGE_BASE_URL", "http://127.0.0.1:8700", parse.url("http", "https"),
        "Alpha Vantage base URL (the real one: https://www.alphavantage.co)")
    alphavantage_api_key: str = _setting(
        "ALPHAVANTAGE_API_KEY", "", parse.text, "Alpha Vantage API key (empty: source disabled; never logged)")
    alphavantage_rate_per_min: int = _setting(
        "ALPHAVANTAGE_RATE_PER_MIN", 5, parse.integer(0, 10_000_000),
        "Alpha Vantage requests per minute, never exceeded (0: no limit)")
    alphavantage_rate_per_day: int = _setting(
        "ALPHAVANTAGE_RATE_PER_DAY", 25, parse.integer(0, 1_000_000_000), "Alpha Vantage requests per UTC day (0: no limit)")
    reference_data: bool = _setting(
        "REFERENCE_DATA", True, parse.boolean,
        "keep the symbols table and the earnings calendar (daily, through the sources) and the earnings flags")
    earnings_days: int = _setting(
        "EARNINGS_DAYS", 7, parse.integer(0, 90), "a release this many calendar days ahead or less sets its earnings flag")
    breaker_threshold: int = _setting(
        "BREAKER_THRESHOLD", 5, parse.integer(1, 10_000),
        "consecutive cycles in which every request to a source failed that open its circuit breaker")
    breaker_reset_s: float = _setting(
        "BREAKER_RESET_S", 30.0, parse.number(0.1, 86400), "seconds a breaker stays open before one probe is let through")
    fetch_retries: int = _setting(
        "FETCH_RETRIES", 3, parse.integer(1, 10), "tries per fetch for transient errors, while the cycle's time allows")
    yahoo_max_connections: int = _setting(
        "YAHOO_MAX_CONNECTIONS", 32, parse.integer(1, 1024), "size of the pooled HTTP connections to Yahoo")
    redis_url: str = _setting(
        "REDIS_URL", "redis://127.0.0.1:6379/0", parse.url("redis", "rediss", "unix", "redis+cluster"),
        "Redis to write to (redis://, rediss:// or unix:// URL; redis+cluster://host:port,... for a Redis Cluster, "
        "with SIDECAR_CLUSTER)")
    redis_prefix: str = _setting(
        "REDIS_PREFIX", "sidecar", parse.prefix, "first segment of every Redis key")
    redis_max_connections: int = _setting(
        "REDIS_MAX_CONNECTIONS", 16, parse.integer(1, 1024), "bound of the Redis connection pool")
    redis_timeout_s: float = _setting(
        "REDIS_TIMEOUT_S", 0.5, parse.number(0.01, 30),
        "deadline for one Redis pipeline or read (a cycle's write: 10 µs more per value)")
    redis_history_len: int = _setting(
        "REDIS_HISTORY_LEN", 5000, parse.integer(1, 1_000_000), "closed bars kept per symbol and timeframe")
    db_path: Path = _setting(
        "DB_PATH", Path("var/sidecar.db"), lambda raw: Path(raw.strip()), "SQLite database file")
    cluster: bool = _setting(
        "CLUSTER", False, parse.boolean,
        "run as one member of a cluster: follow only the partitions this member owns (leases in Redis)")
    shard_id: str = _setting(
        "SHARD_ID", "", parse.shard_id, "this member's name in the cluster (empty: host-pid)")
    partitions: int = _setting(
        "PARTITIONS", 64, parse.integer(1, 4096), "partitions the symbols are split into (the same on every member)")
    lease_s: float = _setting(
        "LEASE_S", 5.0, parse.number(1.0, 300.0),
        "lifetime of a member's registration and partition leases (renewed every third of it)")
    store_url: str = _setting(
        "STORE_URL", "", parse.store_url,
        "durable store: empty for SQLite at SIDECAR_DB_PATH, or postgresql://user:password@host:port/db (cluster mode)")
    cycle_trace: str = _setting(
        "CYCLE_TRACE", "", parse.text,
        "file to append one JSON line per cycle to (time, duration, stage times, bars), for soak runs (empty: off)")
    gc_gen0_threshold: int = _setting(
        "GC_GEN0_THRESHOLD", 20_000, parse.integer(0, 10_000_000),
        "allocations between young-generation collections; start-up state is also frozen out of the "
        "collector (0: the interpreter's defaults)")
    flush_interval_s: float = _setting(
        "FLUSH_INTERVAL_S", 10.0, parse.number(0.1, 86400), "seconds between SQLite flushes")
    sqlite_buffer_max: int = _setting(
        "SQLITE_BUFFER_MAX", 1_000_000, parse.integer(1000, 100_000_000),
        "bars kept in memory while SQLite cannot commit; beyond it the oldest are dropped and counted")
    sqlite_synchronous: str = _setting(
        "SQLITE_SYNCHRONOUS", "FULL", parse.choice("FULL", "NORMAL"),
        "SQLite synchronous mode (FULL survives power loss; costs ~nothing at one commit per flush)")
    http_host: str = _setting(
        "HTTP_HOST", "127.0.0.1", parse.host, "address of the health/metrics/read HTTP server")
    http_port: int = _setting(
        "HTTP_PORT", 8787, parse.integer(0, 65535), "port of the HTTP server (0 picks a free one)")
    stale_after_s: float = _setting(
        "STALE_AFTER_S", 5.0, parse.number(0.1, 86400),
        "a symbol not refreshed for this long is stale: in /health, its Redis bar flagged, dead-lettered")
    spike_atr: float = _setting(
        "SPIKE_ATR", 15.0, parse.number(0, 1e6),
        "a closed bar this many ATRs from the previous close waits for the next bar to confirm it (0: off)")
    price_bounds: tuple[tuple[str, float, float], ...] = _setting(
        "PRICE_BOUNDS", (), parse.price_bounds,
        'plausible price range per asset class as JSON, e.g. {"fx": [0.0001, 100000]} (empty: built-in)')
    future_tolerance_s: float = _setting(
        "FUTURE_TOLERANCE_S", 5.0, parse.number(0, 3600),
        "clock skew allowed before a bar's timestamp counts as in the future")
    shutdown_timeout_s: float = _setting(
        "SHUTDOWN_TIMEOUT_S", 8.0, parse.number(0.5, 300),
        "internal deadline for a graceful stop (keep below PM2's kill_timeout)")
    timeframes: tuple[str, ...] = _setting(
        "TIMEFRAMES", ALL_TIMEFRAMES, parse_timeframes,
        "bar timeframes built live, from 1m by session rules (1m is always on)")
    higher_forming_s: float = _setting(
        "HIGHER_FORMING_S", 5.0, parse.number(0, 3600),
        "seconds between refreshes of a symbol's forming bar and provisional features in the timeframes above 1m "
        "(spread over the symbols; closes are never delayed; 0 or the cycle: every cycle)")
    day_start: tuple[tuple[str, str], ...] = _setting(
        "DAY_START", (), parse_day_starts,
        "where the daily bar starts for fx, futures, crypto, e.g. fx=17:00 America/New_York "
        "(empty: the primary source's own days: fx 00:00 London, futures 00:00 New York, crypto 00:00 UTC)")
    feature_periods: FeatureConfig = _setting(
        "FEATURE_PERIODS", FeatureConfig(), parse.feature_config,
        'indicator periods as JSON, e.g. {"rsi": 7, "sma": [10, 50, 200]} (empty: the defaults)')
    feature_warmup_bars: int = _setting(
        "FEATURE_WARMUP_BARS", 600, parse.integer(0, 100_000),
        "stored closed bars replayed per symbol at start-up (>= 500 for 1e-9 ADX agreement)")
    persist_features: bool = _setting(
        "PERSIST_FEATURES", True, parse.boolean,
        "store the features at each bar's close, every timeframe, in SQLite's features table (training audits, "
        "and OBV carried across restarts)")
    feature_ttl_s: float = _setting(
        "FEATURE_TTL_S", 2.0, parse.number(0.1, 3600),
        "lifetime of the `heartbeat` key: how long after the last cycle a reader may trust the values")
    signal_rules: str = _setting(
        "SIGNAL_RULES", DEFAULT_RULES, parse.text, "scanner rules: 'name: A op B [when C op D]; ...'")
    signal_max_age_s: float = _setting(
        "SIGNAL_MAX_AGE_S", 3.0, parse.number(0.1, 86400), "features older than this are stale: skipped by the scanner")
    signals_maxlen: int = _setting(
        "SIGNALS_MAXLEN", 10_000, parse.integer(1, 10_000_000), "approximate length of the signals stream")
    broker_symbols: tuple[tuple[str, str], ...] = _setting(
        "BROKER_SYMBOLS", (), parse.broker_map, "broker names of symbols, CANONICAL=BROKER,... (default: the same)")
    log_level: str = _setting(
        "LOG_LEVEL", "INFO", parse.choice("DEBUG", "INFO", "WARNING", "ERROR"), "log verbosity")

    def _finish(self, given: set[str]) -> Settings:
        """A universe named in these settings brings its members into `symbols`: they replace
        the default list, or join the symbols named beside it. A cluster needs a shared store."""
        if self.redis_url.startswith("redis+cluster://") and not self.cluster:
            raise SettingsError(PREFIX + "REDIS_URL", "a Redis Cluster is written by cluster members: set "
                                "SIDECAR_CLUSTER=true (keys are then tagged by partition)")
        if self.cluster and not self.store_url:
            raise SettingsError(PREFIX + "STORE_URL", "a cluster (SIDECAR_CLUSTER=true) needs a postgresql:// store "
                                "every member writes; SQLite is one machine's")
        if "universe" not in given or not self.universe:
            return self
        try:
            members = universes.resolve(self.universe, Path(self.universes_dir) if self.universes_dir else None)
        except (OSError, ValueError) as exc:
            raise SettingsError(PREFIX + "UNIVERSE", str(exc)) from None
        named = self.symbols if "symbols" in given else ()
        return replace(self, symbols=tuple(dict.fromkeys((*named, *members))))

    def providers(self) -> dict[str, ProviderSettings]:
        """Each provider's settings, by name (`SOURCE_NAMES` order)."""
        delays = dict(self.source_delays)
        return {name: ProviderSettings(name, getattr(self, f"{name}_base_url"), getattr(self, f"{name}_api_key", ""),
                                       getattr(self, f"{name}_rate_per_min"), getattr(self, f"{name}_rate_per_day"),
                                       delays.get(name, 0.0))
                for name in parse.SOURCE_NAMES}

    def day_starts(self) -> dict[AssetClass, DayStart]:
        """`day_start` as the bucket rules take it."""
        return {AssetClass(name): day_start(text) for name, text in self.day_start}

    def redacted(self) -> dict[str, str]:
        """The settings as strings for the start-up log line, with secrets masked."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "broker_symbols":
                text = ",".join(f"{a}={b}" for a, b in value)
            elif f.name == "price_bounds":
                text = orjson.dumps({a: [lo, hi] for a, lo, hi in value}).decode()
            elif f.name in ("source_delays", "retention_higher"):
                text = ",".join(f"{a}={b:g}" for a, b in value)
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = str(value)
            if f.name.endswith("_api_key"):
                text = "<set>" if text else ""
            out[f.metadata["env"]] = redact_url(text) if f.name.endswith("_url") else text
        return out


@dataclass(slots=True, frozen=True)
class ExchangeSettings(_FromEnv):
    """Settings of the local exchange (`python -m sidecar.exchange`)."""

    host: str = _setting("EXCHANGE_HOST", "127.0.0.1", parse.host, "address the local exchange listens on")
    port: int = _setting("EXCHANGE_PORT", 8700, parse.integer(0, 65535), "port of the local exchange")
    seed: int = _setting("EXCHANGE_SEED", 42, parse.integer(0, 2**31 - 1), "seed of the simulated market")
    always_open: bool = _setting(
        "EXCHANGE_ALWAYS_OPEN", False, parse.boolean,
        "every symbol trades around the clock (otherwise real sessions apply)")


ALL_SETTINGS: dict[str, Any] = {
    f.metadata["env"]: f for cls in (Settings, ExchangeSettings) for f in fields(cls)
}
"""Every recognised environment variable and its dataclass field."""
