"""The symbol table: one slot per followed symbol, its state between cycles in arrays.

Every stage of the cycle addresses a symbol by its slot. What every symbol has every second
(cursor, last update, synced-until, the spike filter's reference close, the newest bar written,
its source) is a NumPy array indexed by slot, so a stage updates thousands of symbols in one
operation. What only a few symbols have at a time (a bar held by the spike filter, closed bars
that could still be revised, rejected minutes being asked for again, the last fetch error)
lives in small dicts keyed by slot, and a symbol without any has no entry.

`-1` marks an unset integer (no cursor yet, no bar written) and NaN an unset time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np

from ..bars import Bar
from ..packed import NameColumn, SlotNames
from ..symbols import AssetClass, SymbolInfo

if TYPE_CHECKING:
    from ..sources import GuardedSource

CLASSES = list(AssetClass)

# name -> (dtype, unset value): the per-slot arrays
_COLUMNS: dict[str, tuple[type, float]] = {
    "cursor": (np.int64, -1),  # open of the newest closed bar accepted
    "window_end": (np.int64, 0),  # end of the window last asked for
    "synced_until": (np.int64, -1),  # quotes mode: every closed minute before this is accounted for
    "last_update": (np.float64, np.nan),  # wall time of the last answer
    "dead_since": (np.float64, np.nan),  # on the dead-letter hash since
    "lo": (np.float64, 0.0),  # the asset class's plausible price range
    "hi": (np.float64, np.inf),
    "ref_ts": (np.int64, -1),  # the newest closed bar accepted: the spike filter's reference
    "ref_close": (np.float64, np.nan),
    "source": (np.int16, -1),  # index in `source_names` of the source of its newest bars
    "hist_ts": (np.int64, -1),  # open of the newest closed bar this process wrote to the Redis history
    "asset_class": (np.int8, 0),  # index in CLASSES
    # the newest bar written to Redis
    "lt_ts": (np.int64, -1),
    "lt_open": (np.float64, np.nan),
    "lt_high": (np.float64, np.nan),
    "lt_low": (np.float64, np.nan),
    "lt_close": (np.float64, np.nan),
    "lt_volume": (np.float64, np.nan),
    "lt_flags": (np.int64, 0),
    "lt_source": (np.int16, -1),
}


Columns = Mapping[str, tuple[type, float]]
"""Per-slot arrays of a component: name -> (dtype, unset value)."""


def grow_columns(owner: object, columns: Columns, capacity: int) -> None:
    """Grow `owner`'s per-slot arrays to `capacity` slots (creating them if absent), keeping
    what they hold; new slots are unset."""
    for name, (dtype, unset) in columns.items():
        old = getattr(owner, name, None)
        grown: np.ndarray = np.full(capacity, unset, dtype=dtype)
        if old is not None:
            grown[:len(old)] = old
        setattr(owner, name, grown)


def reset_columns(owner: object, columns: Columns, slots: np.ndarray | int) -> None:
    """Unset some slots of `owner`'s per-slot arrays."""
    for name, (_dtype, unset) in columns.items():
        getattr(owner, name)[slots] = unset


class SymbolTable:
    """Slots, per-slot arrays and the few per-slot objects.

    :param bounds: the plausible (low, high) price of each asset class.
    :param source_names: the sources' names; a row's source is its index here.
    :param capacity: initial number of slots (grows as needed).
    """

    def __init__(self, bounds: Mapping[AssetClass, tuple[float, float]], source_names: list[str],
                 capacity: int = 64) -> None:
        self.bounds = bounds
        self.source_names = source_names
        self.slot_of: dict[str, int] = {}
        self.infos: list[SymbolInfo | None] = []
        self.symbols: list[str] = []  # by slot; "" where free
        self.sources: list[list[GuardedSource]] = []  # by slot: the ones that serve it, in order
        self.active = np.zeros(0, dtype=bool)
        self._free: list[int] = []
        self.version = 0  # changes whenever a symbol is added or removed
        self._names: tuple[int, NameColumn] | None = None
        grow_columns(self, _COLUMNS, 0)
        self.cursor: np.ndarray
        self.window_end: np.ndarray
        self.synced_until: np.ndarray
        self.last_update: np.ndarray
        self.dead_since: np.ndarray
        self.lo: np.ndarray
        self.hi: np.ndarray
        self.ref_ts: np.ndarray
        self.ref_close: np.ndarray
        self.source: np.ndarray
        self.hist_ts: np.ndarray
        self.asset_class: np.ndarray
        self.lt_ts: np.ndarray
        self.lt_open: np.ndarray
        self.lt_high: np.ndarray
        self.lt_low: np.ndarray
        self.lt_close: np.ndarray
        self.lt_volume: np.ndarray
        self.lt_flags: np.ndarray
        self.lt_source: np.ndarray
        # rare state, by slot
        self.pending: dict[int, Bar] = {}  # a closed bar that jumped, held until the next bar decides
        self.unsettled: dict[int, dict[int, Bar]] = {}  # closed bars stored while they could still change
        self.reject_attempts: dict[int, dict[int, int]] = {}  # rejected minutes asked for again, and how often
        self.last_error: dict[int, str] = {}  # symbols whose last fetch failed
        self.errors: dict[int, dict[str, str]] = {}  # the last error of each source that failed it
        self.beyond_reach_logged: set[int] = set()
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        old = len(self.active)
        if capacity <= old:
            return
        grow_columns(self, _COLUMNS, capacity)
        active = np.zeros(capacity, dtype=bool)
        active[:old] = self.active
        self.active = active
        self.infos += [None] * (capacity - old)
        self.symbols += [""] * (capacity - old)
        self.sources += [[] for _ in range(capacity - old)]
        self._free = list(range(capacity - 1, old - 1, -1)) + self._free

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.slot_of

    def add(self, info: SymbolInfo, sources: list[GuardedSource]) -> int:
        """Give a symbol a slot with fresh state; return the slot."""
        if not self._free:
            self._grow(max(64, 2 * len(self.active)))
        slot = self._free.pop()
        reset_columns(self, _COLUMNS, slot)
        self.lo[slot], self.hi[slot] = self.bounds[info.asset_class]
        self.asset_class[slot] = CLASSES.index(info.asset_class)
        self.active[slot] = True
        self.infos[slot], self.symbols[slot], self.sources[slot] = info, info.symbol, sources
        self.slot_of[info.symbol] = slot
        self.version += 1
        return slot

    def remove(self, symbol: str) -> int | None:
        """Free a symbol's slot; return it (None if the symbol was not followed)."""
        slot = self.slot_of.pop(symbol, None)
        if slot is None:
            return None
        self.active[slot] = False
        self.infos[slot], self.symbols[slot], self.sources[slot] = None, "", []
        for rare in (self.pending, self.unsettled, self.reject_attempts, self.last_error, self.errors):
            rare.pop(slot, None)
        self.beyond_reach_logged.discard(slot)
        self._free.append(slot)
        self.version += 1
        return slot

    def names(self, slots: np.ndarray | None = None) -> SlotNames:
        """The symbols of `slots` (default: every slot), backed by one column of names built
        once per membership change (what the Redis write cuts its keys and values from)."""
        if self._names is None or self._names[0] != self.version:
            self._names = (self.version, NameColumn.of(self.symbols))
        return SlotNames(self._names[1], np.arange(len(self.symbols)) if slots is None else slots)

    def slots(self) -> np.ndarray:
        """The slots in use, in ascending order."""
        return np.flatnonzero(self.active)

    def info(self, slot: int) -> SymbolInfo:
        """The symbol at a slot."""
        info = self.infos[slot]
        assert info is not None, f"slot {slot} is free"
        return info

    def source_code(self, name: str) -> int:
        """A source name's index (a new name is appended)."""
        if name not in self.source_names:
            self.source_names.append(name)
        return self.source_names.index(name)

    def latest(self, slot: int) -> Bar | None:
        """The newest bar written to Redis for a slot, as a Bar (an edge: HTTP, re-seeding)."""
        if self.lt_ts[slot] < 0:
            return None
        return Bar(self.symbols[slot], "1m", int(self.lt_ts[slot]), float(self.lt_open[slot]),
                   float(self.lt_high[slot]), float(self.lt_low[slot]), float(self.lt_close[slot]),
                   float(self.lt_volume[slot]), self.source_names[self.lt_source[slot]], int(self.lt_flags[slot]))

    def clear_errors(self, slots: np.ndarray) -> list[int]:
        """Forget the errors of slots whose source answered; return the ones that had a last
        error (they recovered). Goes through the smaller of the slots and the failed: a catch-up
        answers one slot at a time while thousands may have failed (a scan of every failed slot
        per answer was 10 % of a member's CPU at 2 x 10,000 after failed batch quotes; py-spy)."""
        if not (self.last_error or self.errors):
            return []
        heard = slots.tolist()
        if len(heard) > len(self.last_error) + len(self.errors):  # fewer failed than answered: look them up
            answered = set(heard)
            recovered = [s for s in self.last_error if s in answered]
            erred = [s for s in self.errors if s in answered]
        else:
            recovered = [s for s in heard if s in self.last_error]
            erred = [s for s in heard if s in self.errors]
        for slot in recovered:
            del self.last_error[slot]
        for slot in erred:
            del self.errors[slot]
        return recovered

    def freshness(self, now: float, stale_after_s: float, delays: np.ndarray,
                  per_symbol: bool = True) -> tuple[int, dict[str, dict[str, object]]]:
        """How many symbols were refreshed within `stale_after_s`, and with `per_symbol` each
        one's freshness for /health (`delays`: each source's plan delay, by source code)."""
        slots = self.slots()
        age = now - self.last_update[slots]
        fresh = age <= stale_after_s  # NaN (never updated) is not fresh
        freshness = {} if not per_symbol else {
            self.symbols[s]: {"fresh": bool(ok), "last_bar_ts": None if self.lt_ts[s] < 0 else int(self.lt_ts[s]),
                              "last_update_age_s": None if a != a else round(float(a), 3),
                              "last_error": self.last_error.get(s),
                              "source": None if self.source[s] < 0 else self.source_names[self.source[s]],
                              **({"delay_s": float(delays[self.source[s]])} if delays[self.source[s]] else {})}
            for s, ok, a in zip(slots.tolist(), fresh.tolist(), age.tolist(), strict=True)}
        return int(fresh.sum()), freshness

    def view(self, symbol: str) -> SlotView:
        """One symbol's state as attributes (for tests and operators; the cycle uses the arrays)."""
        return SlotView(self, self.slot_of[symbol])


def _int_or_none(value: np.integer) -> int | None:
    return None if value < 0 else int(value)


class SlotView:
    """Reads and writes one slot's state by name: `cursor`, `synced_until`, `last_update` are
    None when unset, `pending`/`unsettled` the rare objects, `latest` the newest bar written."""

    __slots__ = ("table", "slot")

    def __init__(self, table: SymbolTable, slot: int) -> None:
        self.table, self.slot = table, slot

    @property
    def info(self) -> SymbolInfo:
        """The symbol."""
        return self.table.info(self.slot)

    @property
    def cursor(self) -> int | None:
        """Open of the newest closed bar accepted."""
        return _int_or_none(self.table.cursor[self.slot])

    @cursor.setter
    def cursor(self, value: int | None) -> None:
        self.table.cursor[self.slot] = -1 if value is None else value

    @property
    def synced_until(self) -> int | None:
        """Quotes mode: every closed minute before this is accounted for."""
        return _int_or_none(self.table.synced_until[self.slot])

    @property
    def last_update(self) -> float | None:
        """Wall time of the last answer."""
        t = float(self.table.last_update[self.slot])
        return None if t != t else t

    @property
    def dead_since(self) -> float | None:
        """On the dead-letter hash since."""
        t = float(self.table.dead_since[self.slot])
        return None if t != t else t

    @property
    def last_bar_ts(self) -> int | None:
        """Open of the newest bar written to Redis."""
        return _int_or_none(self.table.lt_ts[self.slot])

    @property
    def latest(self) -> Bar | None:
        """The newest bar written to Redis."""
        return self.table.latest(self.slot)

    @property
    def last_closed_close(self) -> float | None:
        """Close of the newest closed bar accepted."""
        c = float(self.table.ref_close[self.slot])
        return None if c != c else c

    @property
    def pending(self) -> Bar | None:
        """A closed bar held by the spike filter."""
        return self.table.pending.get(self.slot)

    @property
    def unsettled(self) -> dict[int, Bar]:
        """Closed bars stored while they could still change, by open."""
        return self.table.unsettled.get(self.slot, {})

    @unsettled.setter
    def unsettled(self, bars: dict[int, Bar]) -> None:
        if bars:
            self.table.unsettled[self.slot] = dict(bars)
        else:
            self.table.unsettled.pop(self.slot, None)

    @property
    def source(self) -> str | None:
        """The source of its newest bars."""
        code = int(self.table.source[self.slot])
        return None if code < 0 else self.table.source_names[code]

    @property
    def sources(self) -> list[GuardedSource]:
        """The sources that serve it, in order."""
        return self.table.sources[self.slot]

    @property
    def last_error(self) -> str | None:
        """Its last fetch error (None once a source answers)."""
        return self.table.last_error.get(self.slot)


class StatesView(Mapping[str, SlotView]):
    """The table as a read-only mapping of symbol -> SlotView."""

    def __init__(self, table: SymbolTable) -> None:
        self.table = table

    def __getitem__(self, symbol: str) -> SlotView:
        return self.table.view(symbol)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.table.slot_of))

    def __len__(self) -> int:
        return len(self.table)
