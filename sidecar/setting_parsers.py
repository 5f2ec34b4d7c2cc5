"""What a setting's text may be: one parser per kind of value, each returning the value or
raising ValueError with a message that says what was expected (`Settings` names the variable).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from .errors import SymbolError
from .features.config import FeatureConfig
from .symbols import AssetClass, lookup
from .timeframes import ALL as ALL_TIMEFRAMES

Parser = Callable[[str], Any]
"""A setting's parser: its text in, its value out (ValueError when the text is not one)."""


def parse_number(raw: str, cast: type[int] | type[float], lo: float, hi: float) -> Any:
    """`raw` as an int or float within [lo, hi]; ValueError with a message otherwise (nan included)."""
    try:
        value = cast(raw)
    except ValueError:
        kind = "an integer" if cast is int else "a number"
        raise ValueError(f"expected {kind}, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"expected {lo}..{hi}, got {raw.strip()}")
    return value


def integer(lo: int, hi: int) -> Parser:
    """An integer within [lo, hi]."""
    return lambda raw: parse_number(raw, int, lo, hi)


def number(lo: float, hi: float) -> Parser:
    """A number within [lo, hi]."""
    return lambda raw: parse_number(raw, float, lo, hi)


def boolean(raw: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (empty: false)."""
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def choice(*options: str) -> Parser:
    """One of `options` (matched without regard to case)."""
    upper = all(o.isupper() for o in options)

    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def url(*schemes: str) -> Parser:
    """A URL of one of `schemes` (an http(s) URL without its trailing slash)."""
    def parse(raw: str) -> str:
        parts = urlsplit(raw.strip())
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            raise ValueError(f"expected a {'/'.join(schemes)} URL, got {redact_url(raw)!r}")
        return raw.strip().rstrip("/") if parts.scheme.startswith("http") else raw.strip()

    return parse


def shard_id(raw: str) -> str:
    """A cluster member's name (empty: host and pid)."""
    if raw.strip() and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", raw.strip()):
        raise ValueError(f"expected 1-64 letters, digits, '_', '.' or '-', got {raw!r}")
    return raw.strip()


def store_url(raw: str) -> str:
    """Empty (SQLite at SIDECAR_DB_PATH) or a postgresql:// URL."""
    return url("postgresql", "postgres")(raw) if raw.strip() else ""


def optional_url(raw: str) -> str:
    """Empty, or an http(s) URL."""
    return url("http", "https")(raw) if raw.strip() else ""


SOURCE_NAMES = ("yahoo", "twelvedata", "polygon", "alphavantage")


def source_list(raw: str) -> tuple[str, ...]:
    """Distinct source names, in order of preference."""
    names = tuple(n.strip().lower() for n in raw.split(",") if n.strip())
    bad = [n for n in names if n not in SOURCE_NAMES]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"expected distinct names from {', '.join(SOURCE_NAMES)}, got {raw!r}")
    return names


def delays(raw: str) -> tuple[tuple[str, float], ...]:
    """`polygon=15m,twelvedata=30s` (a number alone is seconds): each source's plan delay, at
    most an hour (bars older than that are settled whatever the plan)."""
    out: dict[str, float] = {}
    for part in filter(str.strip, raw.split(",")):
        name, sep, value = (x.strip().lower() for x in part.partition("="))
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([sm]?)", value)
        if not sep or name not in SOURCE_NAMES or m is None:
            raise ValueError(f"expected <source>=<seconds>[s|m] with sources {', '.join(SOURCE_NAMES)}, "
                             f"got {part.strip()!r}")
        seconds = float(m[1]) * (60 if m[2] == "m" else 1)
        if seconds > 3600:
            raise ValueError(f"{name}: a delay of at most 60m, got {value}")
        out[name] = seconds
    return tuple(out.items())


def retention(raw: str) -> tuple[tuple[str, int], ...]:
    """`5m=730,1h=3650`: days kept per timeframe above 1m."""
    out = {}
    for part in filter(str.strip, raw.split(",")):
        tf, sep, days = (x.strip() for x in part.partition("="))
        if not sep or tf not in ALL_TIMEFRAMES or tf == "1m" or not days.isdigit() or not 1 <= int(days) <= 365_000:
            raise ValueError(f"expected <timeframe>=<days> with timeframes {', '.join(ALL_TIMEFRAMES[1:])} "
                             f"(1m: SIDECAR_RETENTION_DAYS), got {part.strip()!r}")
        out[tf] = int(days)
    return tuple(out.items())


def host(raw: str) -> str:
    """An IP address to listen on, or 'localhost'."""
    value = raw.strip()
    if value == "localhost":
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"expected an IP address or 'localhost', got {raw!r}") from None
    return value


def symbol_list(raw: str) -> tuple[str, ...]:
    """Symbols separated by commas or spaces, or `@file` with them; canonical, in order, once each."""
    text = raw.strip()
    if text.startswith("@"):  # a file: tens of thousands of symbols do not fit in one variable (128 kB)
        path = Path(text[1:]).expanduser()
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the symbols file {path}: {exc}") from None
    out: dict[str, None] = {}  # ordered, and a set: a list's membership test made 50,000 symbols take minutes
    for part in re.split(r"[,\s]+", text):
        if part:
            try:
                out[lookup(part).symbol] = None
            except SymbolError as exc:
                raise ValueError(str(exc)) from None
    if not out:
        raise ValueError("expected at least one symbol")
    return tuple(out)


def prefix(raw: str) -> str:
    """A Redis key prefix: 1-32 letters, digits, '_' or '-'."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", raw.strip()):
        raise ValueError(f"expected 1-32 letters, digits, '_' or '-', got {raw!r}")
    return raw.strip()


def text(raw: str) -> str:
    """Any text, stripped."""
    return raw.strip()


def feature_config(raw: str) -> FeatureConfig:
    """A JSON object of FeatureConfig fields, e.g. {"rsi": 7, "sma": [10, 50, 200]}."""
    if not raw.strip():
        return FeatureConfig()
    try:
        fields_ = orjson.loads(raw)
        if not isinstance(fields_, dict):
            raise TypeError("not an object")
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields_.items()}
        return FeatureConfig(**kwargs)
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"expected a JSON object of indicator periods: {exc}") from None


def price_bounds(raw: str) -> tuple[tuple[str, float, float], ...]:
    """A JSON object {asset class: [low, high]}, e.g. {"fx": [0.0001, 100000]}."""
    if not raw.strip():
        return ()
    try:
        given = orjson.loads(raw)
        out = []
        for name, (lo, hi) in given.items():
            AssetClass(name)
            if not 0 <= float(lo) < float(hi):
                raise ValueError(f"{name}: low must be >= 0 and below high")
            out.append((name, float(lo), float(hi)))
        return tuple(out)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f'expected {{"<asset class>": [low, high], ...}} with classes '
                         f'{", ".join(a.value for a in AssetClass)}: {exc}') from None


def broker_map(raw: str) -> tuple[tuple[str, str], ...]:
    """`CANONICAL=BROKER,...`, e.g. NAS100=USTEC,XAUUSD=GOLD."""
    pairs = []
    for part in filter(str.strip, raw.split(",")):
        canonical, sep, broker = part.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9._#-]{1,32}", broker.strip()):
            raise ValueError(f"expected CANONICAL=BROKER pairs, got {part.strip()!r}")
        try:
            pairs.append((lookup(canonical).symbol, broker.strip()))
        except SymbolError as exc:
            raise ValueError(str(exc)) from None
    return tuple(pairs)


def redact_url(address: str) -> str:
    """The URL with any password replaced by '***', for logs."""
    parts = urlsplit(address)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return address
