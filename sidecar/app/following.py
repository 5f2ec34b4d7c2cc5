"""Which symbols this daemon follows, changed while it runs: symbols added through the HTTP API
or gained with a cluster partition are warmed from their stored history first, in chunks between
two cycles; removed ones leave every stage; the symbols with no stored bars are bootstrapped."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..cluster.partitions import partition_of
from ..features.service import FeatureService
from ..scanner import Scanner
from ..settings import Settings
from ..stores import DurableStore
from ..symbols import SymbolInfo, lookup, parse_symbol
from .orchestrator import TIMEFRAME, Orchestrator

log = logging.getLogger(__name__)
ADD_CHUNK = 500
"""Symbols added per pause between cycles (warm-up from the store included)."""


class Following:
    """The followed symbols (`symbols`, shared with the daemon's other components) and their changes.

    :param settings: the partitions, the warm-up depth, the restart overlap.
    :param symbols: the followed symbols by name, updated in place.
    :param universe: every symbol of the settings (a cluster member follows its partitions' share).
    :param orchestrator: the loop whose stages take and drop symbols between cycles.
    :param features: the minute features, warmed for new symbols.
    :param scanner: told the symbols after each change.
    :param store: the durable store: stored history and newest stored bars.
    :param broker_symbols: the broker's names of symbols, for the scanner's signals.
    :param bootstrap: fetches the history of symbols with none stored.
    """

    def __init__(self, *, settings: Settings, symbols: dict[str, SymbolInfo], universe: list[SymbolInfo],
                 orchestrator: Orchestrator, features: FeatureService, scanner: Scanner, store: DurableStore,
                 broker_symbols: dict[str, str], bootstrap: Callable[[list[SymbolInfo]], None]) -> None:
        self.settings, self.symbols, self.universe = settings, symbols, universe
        self.orchestrator, self.features, self.scanner, self.store = orchestrator, features, scanner, store
        self.broker_symbols, self.bootstrap = broker_symbols, bootstrap

    async def update(self, add: list[str], remove: list[str]) -> list[str]:
        """Follow more or fewer symbols while running: new ones are warmed from their stored
        history first; return the symbols followed afterwards. Not persisted: SIDECAR_SYMBOLS
        is the list at the next start. A malformed symbol raises SymbolError, changing nothing."""
        infos = [lookup(raw) for raw in add]
        gone = [parse_symbol(raw) for raw in remove]
        orch = self.orchestrator
        async with orch.between_cycles:  # never in the middle of a cycle's stages
            gone = [symbol for symbol in gone if self.symbols.pop(symbol, None) is not None]
            orch.remove(gone)
            self.features.book.remove(gone)
            orch.higher.remove(gone)
        new = list({i.symbol: i for i in infos if i.symbol not in self.symbols}.values())
        unknown: list[SymbolInfo] = []  # nothing stored yet: bootstrapped
        # In chunks, each between two cycles: a partition taken over brings thousands of symbols,
        # and warming them at once would hold the loop (and the lease renewals) for seconds.
        for k in range(0, len(new), ADD_CHUNK):
            chunk = new[k:k + ADD_CHUNK]
            async with orch.between_cycles:
                histories = await self.features.warm_from(self.store, chunk, self.settings.feature_warmup_bars)
                orch.add(chunk)
                await orch.higher.warm({i.symbol for i in chunk})
                self.symbols.update({i.symbol: i for i in chunk})
            unknown += [i for i in chunk if not histories[i.symbol]]
        self.bootstrap(unknown)
        names = list(self.symbols)
        self.scanner.set_symbols(names, [self.broker_symbols.get(x, x) for x in names])
        if new or gone:
            log.info("symbols now %d: added %d %s, removed %d %s", len(names), len(new),
                     [i.symbol for i in new[:10]], len(gone), gone[:10])
        return names

    async def partitions_moved(self, gained: dict[int, int], lost: set[int]) -> None:
        """Follow the symbols of the partitions this member now owns, and drop the others'. A
        gained partition's symbols continue after their newest stored bar (the minutes since
        are fetched again: the upserts make an overlap harmless), warmed from stored history.
        Idempotent: the coordinator calls it again with the same partitions when it raised."""
        n = self.settings.partitions
        drop = [i.symbol for i in self.universe if partition_of(i.symbol, n) in lost]
        take = [i.symbol for i in self.universe if partition_of(i.symbol, n) in gained]
        await self.update(take, drop)
        if take:  # the store unreadable: this raises, and the coordinator applies the change again
            last = await self.store.last_stored(TIMEFRAME, take)
            self.orchestrator.resume(last, overlap_s=self.settings.restart_overlap_minutes * 60)
