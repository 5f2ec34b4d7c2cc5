"""The scanner: reads every symbol's features back from Redis, skips stale ones, evaluates
signal rules across all symbols at once, and publishes each new signal.

Rules are declared in settings as `name: A op B [when C op D]; ...`, where A-D are feature
names (`rsi_14`, `macd_signal`, ...), `close`, or numbers, and op is one of > >= < <=. A rule
fires when its condition becomes true for a symbol (a crossing), never again while it holds;
the first sight of a symbol only records its state. Defaults: RSI crossing 30/70, MACD
crossing its signal, close outside the Bollinger bands, relative volume >= 3.
"""

from __future__ import annotations

import operator
import re
import time
from collections.abc import Callable, Sequence
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
_TERM = r"([A-Za-z_][A-Za-z0-9_]*|-?\d+(?:\.\d+)?)"
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


def parse_rules(text: str, features: Sequence[str], setting: str = "SIDECAR_SIGNAL_RULES") -> tuple[Rule, ...]:
    """Parse `name: A op B [when C op D]; ...`; an unknown feature or bad syntax raises
    SettingsError naming the setting."""
    known = {*features, "close"}
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
                if raw not in known:
                    raise SettingsError(setting, f"rule {m[1]!r}: unknown feature {raw!r}")
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
    ts: int  # open of the bar the features belong to
    time: float  # wall time of the scan
    provisional: bool  # True when it fired on a forming bar's features
    close: float
    left: float
    right: float

    def as_map(self) -> dict[str, object]:
        """Named fields, as published."""
        return {"symbol": self.symbol, "broker_symbol": self.broker_symbol, "rule": self.rule,
                "condition": self.condition, "ts": self.ts, "time": self.time, "provisional": self.provisional,
                "close": self.close, "left": self.left, "right": self.right}


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
    """

    def __init__(self, *, symbols: Sequence[str], broker_symbols: Sequence[str], codec: FeatureCodec,
                 rules: Sequence[Rule], max_age_s: float) -> None:
        self.symbols = list(symbols)
        self.broker_symbols = list(broker_symbols)
        self.codec = codec
        self.rules = tuple(rules)
        self.max_age_s = max_age_s
        self._row = {name: i for i, name in enumerate(codec.outputs)}
        terms = [t for rule in self.rules for cond in (rule.condition, rule.filter) if cond is not None
                 for t in (cond.left, cond.right)]
        self.fields = {t for t in terms if isinstance(t, str) and t != "close"}  # what a scan decodes
        self._state = np.full((len(self.rules), len(self.symbols)), -1, dtype=np.int8)  # -1 unknown

    def set_symbols(self, symbols: Sequence[str], broker_symbols: Sequence[str]) -> None:
        """Follow a new symbol list; symbols that stay keep their crossing state."""
        old = {sym: i for i, sym in enumerate(self.symbols)}
        state = np.full((len(self.rules), len(symbols)), -1, dtype=np.int8)
        for j, sym in enumerate(symbols):
            if sym in old:
                state[:, j] = self._state[:, old[sym]]
        self.symbols, self.broker_symbols, self._state = list(symbols), list(broker_symbols), state

    def _side(self, frame: FeatureFrame, term: str | float) -> np.ndarray:
        if isinstance(term, float):
            return np.full(len(self.symbols), term)
        return frame.close if term == "close" else frame.values[self._row[term]]

    def _holds(self, frame: FeatureFrame, cond: Condition) -> tuple[np.ndarray, np.ndarray]:
        left, right = self._side(frame, cond.left), self._side(frame, cond.right)
        known = ~np.isnan(left) & ~np.isnan(right)
        with np.errstate(invalid="ignore"):
            return _OPS[cond.op](left, right), known

    def evaluate(self, frame: FeatureFrame, now: float) -> ScanResult:
        """Signals from one frame (columns in `symbols` order)."""
        started = time.perf_counter()
        fresh = frame.present & (now - frame.updated <= self.max_age_s)
        signals: list[Signal] = []
        for r, rule in enumerate(self.rules):
            holds, known = self._holds(frame, rule.condition)
            if rule.filter is not None:
                gate, gate_known = self._holds(frame, rule.filter)
                holds, known = holds & gate, known & gate_known
            known &= fresh
            prev = self._state[r]
            fired = np.flatnonzero(known & holds & (prev == 0))
            self._state[r] = np.where(known, holds, prev)
            if len(fired):
                left, right = self._side(frame, rule.condition.left), self._side(frame, rule.condition.right)
                for j in fired.tolist():
                    signals.append(Signal(
                        symbol=self.symbols[j], broker_symbol=self.broker_symbols[j], rule=rule.name,
                        condition=str(rule.condition), ts=int(frame.ts[j]), time=now,
                        provisional=bool(frame.provisional[j]), close=float(frame.close[j]),
                        left=float(left[j]), right=float(right[j])))
        return ScanResult(signals, int(fresh.sum()), int((~fresh).sum()), time.perf_counter() - started)
