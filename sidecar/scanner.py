"""The scanner: reads every symbol's features back from Redis, skips stale ones, evaluates
signal rules across all symbols at once, and publishes each new signal.

Rules are declared in settings as `name: A op B [when C op D]; ...`, where A-D are feature
names (`rsi_14`, `macd_signal`, ...), `close`, or numbers, and op is one of > >= < <=. A name
may carry a timeframe, `rsi_14@5m < 30 when close@1d > sma_200@1d`; without one it is 1m. A rule
fires when its condition becomes true for a symbol (a crossing), never again while it holds;
the first sight of a symbol only records its state. A signal carries the timeframe of its
condition's first named operand, and the open of that timeframe's bar. Defaults: RSI crossing 30/70, MACD
crossing its signal, close outside the Bollinger bands, relative volume >= 3.

`earnings_in_days` is the one operand that is not a feature: the calendar days until the
symbol's next earnings release not yet out (0 on the day; infinite when none is scheduled), so
`rsi_oversold: rsi_14 < 30 when earnings_in_days > 2` keeps out of the release. Every signal
carries it.
"""

from __future__ import annotations

import operator
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import SettingsError
from .features.codec import FeatureCodec, FeatureFrame

DEFAULT_RULES = (
    "rsi_oversold: rsi_14 < 30; rsi_overbought: rsi_14 > 70; "
    "macd_cross_up: macd > macd_signal; macd_cross_down: macd < macd_signal; "
    "bb_break_up: close > bb_upper; bb_break_down: close < bb_lower; "
    "volume_spike: rvol_20 >= 3"
)
_OPS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
PER_SYMBOL = frozenset({"earnings_in_days"})  # operands that are facts about the symbol, not a timeframe's
_TERM = r"([A-Za-z_][A-Za-z0-9_]*(?:@[0-9]+[a-z])?|-?\d+(?:\.\d+)?)"
_RULE = re.compile(rf"^\s*([a-z][a-z0-9_]*)\s*:\s*{_TERM}\s*(>=|<=|>|<)\s*{_TERM}"
                   rf"(?:\s+when\s+{_TERM}\s*(>=|<=|>|<)\s*{_TERM})?\s*$")


@dataclass(slots=True, frozen=True)
class Condition:
    """`left op right`, each side a feature name, `close`, or a number."""

    left: str | float
    op: str
    right: str | float

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"


@dataclass(slots=True, frozen=True)
class Rule:
    """A named condition, optionally gated by a filter (e.g. an ADX trend filter)."""

    name: str
    condition: Condition
    filter: Condition | None = None

    @property
    def terms(self) -> list[str]:
        """The named operands, condition first."""
        return [t for c in (self.condition, self.filter) if c is not None for t in (c.left, c.right)
                if isinstance(t, str)]

    @property
    def timeframe(self) -> str:
        """The timeframe a signal of this rule is stamped with: its first named operand's."""
        terms = [t for t in self.terms if t not in PER_SYMBOL]
        return split_term(terms[0])[1] if terms else "1m"

    @property
    def timeframes(self) -> set[str]:
        """Every timeframe the rule reads."""
        return {split_term(t)[1] for t in self.terms if t not in PER_SYMBOL}


def split_term(term: str) -> tuple[str, str]:
    """`rsi_14@5m` -> ("rsi_14", "5m"); a name without a timeframe is 1m."""
    name, _, timeframe = term.partition("@")
    return name, timeframe or "1m"


def parse_rules(text: str, features: Sequence[str], setting: str = "SIDECAR_SIGNAL_RULES",
                timeframes: Sequence[str] = ("1m",)) -> tuple[Rule, ...]:
    """Parse `name: A op B [when C op D]; ...`; an unknown feature, a timeframe that is not
    built, or bad syntax raises SettingsError naming the setting."""
    known = {*features, "close", *PER_SYMBOL}
    rules: list[Rule] = []
    for part in filter(str.strip, text.split(";")):
        m = _RULE.match(part)
        if not m:
            raise SettingsError(setting, f"cannot parse rule {part.strip()!r}: expected 'name: A op B [when C op D]'")
        terms: list[str | float] = []
        for raw in (m[2], m[4], m[5], m[7]):
            if raw is None:
                terms.append("")
            elif raw[0].isalpha() or raw[0] == "_":
                name, timeframe = split_term(raw)
                if name not in known:
                    raise SettingsError(setting, f"rule {m[1]!r}: unknown feature {name!r}")
                if name in PER_SYMBOL and "@" in raw:
                    raise SettingsError(setting, f"rule {m[1]!r}: {name} has no timeframe")
                if timeframe not in timeframes:
                    raise SettingsError(setting, f"rule {m[1]!r}: timeframe {timeframe!r} of {raw!r} is not built "
                                                 f"(SIDECAR_TIMEFRAMES is {','.join(timeframes)})")
                terms.append(raw)
            else:
                terms.append(float(raw))
        gate = Condition(terms[2], m[6], terms[3]) if m[5] else None
        rules.append(Rule(m[1], Condition(terms[0], m[3], terms[1]), gate))
    if len({r.name for r in rules}) != len(rules):
        raise SettingsError(setting, "rule names must be unique")
    return tuple(rules)


@dataclass(slots=True, frozen=True)
class Signal:
    """One crossing of one rule by one symbol."""

    symbol: str
    broker_symbol: str
    rule: str
    condition: str
    timeframe: str  # the timeframe of the rule's first named operand
    ts: int  # open of that timeframe's bar the features belong to
    time: float  # wall time of the scan
    provisional: bool  # True when it fired on a forming bar's features
    close: float
    left: float
    right: float
    earnings_in_days: float = float("inf")  # days to the next earnings release (inf: none scheduled)

    def as_map(self) -> dict[str, object]:
        """Named fields, as published."""
        return {"symbol": self.symbol, "broker_symbol": self.broker_symbol, "rule": self.rule,
                "condition": self.condition, "tf": self.timeframe, "ts": self.ts, "time": self.time,
                "provisional": self.provisional, "close": self.close, "left": self.left, "right": self.right,
                "earnings_in_days": None if self.earnings_in_days == float("inf") else int(self.earnings_in_days)}


@dataclass(slots=True, frozen=True)
class ScanResult:
    """What one scan saw and emitted."""

    signals: list[Signal]
    scanned: int
    stale: int
    seconds: float


class Scanner:
    """Evaluates rules over a frame of features; keeps per-rule, per-symbol condition state.

    :param symbols: canonical symbols, in the order their features are read.
    :param broker_symbols: each symbol's name at the broker.
    :param codec: decodes the features.
    :param rules: the rules.
    :param max_age_s: features written longer ago than this are stale and skipped.
    :param higher_refresh_s: how much less often the timeframes above 1m are refreshed (their
        forming values are spread over the cycles): added to their `max_age_s`.
    """

    def __init__(self, *, symbols: Sequence[str], broker_symbols: Sequence[str], codec: FeatureCodec,
                 rules: Sequence[Rule], max_age_s: float, higher_refresh_s: float = 0.0) -> None:
        self.symbols = list(symbols)
        self.broker_symbols = list(broker_symbols)
        self.codec = codec
        self.rules = tuple(rules)
        self.max_age_s = max_age_s
        self.higher_refresh_s = higher_refresh_s
        self._row = {name: i for i, name in enumerate(codec.outputs)}
        self.fields: dict[str, set[str]] = {}  # per timeframe, what a scan reads and decodes
        for rule in self.rules:
            self.fields.setdefault(rule.timeframe, set())  # its signals are stamped with this frame's bars
            for term in rule.terms:
                if term in PER_SYMBOL:
                    continue
                name, timeframe = split_term(term)
                wanted = self.fields.setdefault(timeframe, set())
                if name != "close":
                    wanted.add(name)
        self._state = np.full((len(self.rules), len(self.symbols)), -1, dtype=np.int8)  # -1 unknown
        self._earnings: dict[str, float] = {}
        self._earnings_days = np.full(len(self.symbols), np.inf)

    def set_earnings(self, days: Mapping[str, float]) -> None:
        """Each symbol's days to its next earnings release (a symbol not named: none scheduled)."""
        self._earnings = dict(days)
        self._earnings_days = np.array([self._earnings.get(s, np.inf) for s in self.symbols], dtype=np.float64)

    def set_symbols(self, symbols: Sequence[str], broker_symbols: Sequence[str]) -> None:
        """Follow a new symbol list; symbols that stay keep their crossing state."""
        old = {sym: i for i, sym in enumerate(self.symbols)}
        state = np.full((len(self.rules), len(symbols)), -1, dtype=np.int8)
        for j, sym in enumerate(symbols):
            if sym in old:
                state[:, j] = self._state[:, old[sym]]
        self.symbols, self.broker_symbols, self._state = list(symbols), list(broker_symbols), state
        self.set_earnings(self._earnings)

    def _side(self, frames: Mapping[str, FeatureFrame], term: str | float) -> np.ndarray:
        if isinstance(term, float):
            return np.full(len(self.symbols), term)
        if term == "earnings_in_days":
            return self._earnings_days
        name, timeframe = split_term(term)
        frame = frames[timeframe]
        return frame.close if name == "close" else frame.values[self._row[name]]

    def _holds(self, frames: Mapping[str, FeatureFrame], cond: Condition) -> tuple[np.ndarray, np.ndarray]:
        left, right = self._side(frames, cond.left), self._side(frames, cond.right)
        known = ~np.isnan(left) & ~np.isnan(right)
        with np.errstate(invalid="ignore"):
            return _OPS[cond.op](left, right), known

    def evaluate(self, frames: Mapping[str, FeatureFrame] | FeatureFrame, now: float) -> ScanResult:
        """Signals from one frame per timeframe read (columns in `symbols` order; a single
        frame is the 1m one)."""
        started = time.perf_counter()
        if isinstance(frames, FeatureFrame):
            frames = {"1m": frames}
        fresh = {tf: f.present & (now - f.updated <= self.max_age_s + (tf != "1m") * self.higher_refresh_s)
                 for tf, f in frames.items()}
        signals: list[Signal] = []
        for r, rule in enumerate(self.rules):
            holds, known = self._holds(frames, rule.condition)
            if rule.filter is not None:
                gate, gate_known = self._holds(frames, rule.filter)
                holds, known = holds & gate, known & gate_known
            for timeframe in rule.timeframes:
                known &= fresh[timeframe]
            frame = frames[rule.timeframe]
            prev = self._state[r]
            fired = np.flatnonzero(known & holds & (prev == 0))
            self._state[r] = np.where(known, holds, prev)
            if len(fired):
                left, right = self._side(frames, rule.condition.left), self._side(frames, rule.condition.right)
                for j in fired.tolist():
                    signals.append(Signal(
                        symbol=self.symbols[j], broker_symbol=self.broker_symbols[j], rule=rule.name,
                        condition=str(rule.condition), timeframe=rule.timeframe, ts=int(frame.ts[j]), time=now,
                        provisional=bool(frame.provisional[j]), close=float(frame.close[j]),
                        left=float(left[j]), right=float(right[j]),
                        earnings_in_days=float(self._earnings_days[j])))
        base = fresh.get("1m", next(iter(fresh.values()), np.zeros(0, dtype=bool)))
        return ScanResult(signals, int(base.sum()), int((~base).sum()), time.perf_counter() - started)
