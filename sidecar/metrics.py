"""Prometheus metrics on a registry owned by one daemon (no module-level globals), so tests
and several daemons in one process never share counters."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every metric the daemon exports; components receive this object and update it."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.scraped = CollectorRegistry(auto_describe=False)
        self.cycles = Counter("sidecar_cycles", "Cycles run", registry=r)
        self.cycle_overruns = Counter("sidecar_cycle_overruns", "Cycles that ran past their period", registry=r)
        self.fenced_writes = Counter("sidecar_fenced_writes", "Partition writes Redis refused: a newer owner holds "
                                     "the partition (cluster mode)", registry=r)
        self.cycle_seconds = Histogram("sidecar_cycle_seconds", "Duration of one cycle", buckets=_FAST, registry=r)
        self.fetch_seconds = Histogram("sidecar_fetch_seconds", "Duration of one fetch", ["source"],
                                       buckets=_FAST, registry=r)
        self.fetch_errors = Counter("sidecar_fetch_errors", "Failed fetches", ["source", "reason"], registry=r)
        self.fetch_skipped = Counter("sidecar_fetch_skipped", "Fetches not made: breaker open or rate budget spent",
                                     ["source", "reason"], registry=r)
        self.fetch_retries = Counter("sidecar_fetch_retries", "Transient failures retried within a cycle",
                                     ["source"], registry=r)
        self.breaker_state = Gauge("sidecar_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
                                   ["source"], registry=r)
        self.breaker_transitions = Counter("sidecar_breaker_transitions", "Breaker state changes",
                                           ["source", "to"], registry=r)
        self.bars_accepted = Counter("sidecar_bars_accepted", "Valid bars received", ["source", "kind"], registry=r)
        self.bars_rejected = Counter("sidecar_bars_rejected", "Invalid bars rejected, never stored",
                                     ["source", "reason"], registry=r)
        self.bars_revised = Counter("sidecar_bars_revised", "Stored closed bars corrected to what the source "
                                    "serves once settled (stage: live re-fetch, gap scan or end-of-day check)",
                                    ["source", "stage"], registry=r)
        self.timeframe_revisions = Counter("sidecar_timeframe_revisions", "Closed higher-timeframe bars rebuilt "
                                           "from their stored minutes and found different (a late or corrected "
                                           "minute)", ["timeframe"], registry=r)
        self.synthetic_bars = Counter("sidecar_synthetic_bars", "Flat bars written to Redis history for trading "
                                      "minutes without trades (flag SYNTHETIC)", registry=r)
        self.redis_write_seconds = Histogram("sidecar_redis_write_seconds", "Duration of a cycle's pipeline",
                                             buckets=_FAST, registry=r)
        self.redis_errors = Counter("sidecar_redis_errors", "Failed Redis pipelines", registry=r)
        self.sqlite_flush_seconds = Histogram("sidecar_sqlite_flush_seconds", "Duration of one flush",
                                              buckets=_FAST, registry=r)
        self.sqlite_rows = Counter("sidecar_sqlite_rows_written", "Rows upserted into SQLite", registry=r)
        self.sqlite_errors = Counter("sidecar_sqlite_errors", "Failed SQLite flushes", registry=r)
        self.sqlite_dropped = Counter("sidecar_sqlite_dropped_bars", "Bars dropped from a full buffer",
                                      registry=r)
        self.sqlite_buffered = Gauge("sidecar_sqlite_buffered_bars", "Bars waiting for the next flush", registry=r)
        self.features_seconds = Histogram("sidecar_features_seconds", "Feature commit + forming-bar evaluation",
                                          buckets=_FAST, registry=r)
        self.scan_seconds = Histogram("sidecar_scan_seconds", "Reading features back and evaluating rules",
                                      buckets=_FAST, registry=r)
        self.signals = Counter("sidecar_signals", "Signals published", ["rule"], registry=r)
        self.features_stale = Gauge("sidecar_features_stale", "Symbols whose features were stale at the last scan",
                                    registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric, the scrape-time gauges included
        (per-symbol ones as the text they made themselves)."""
        out = [generate_latest(self.registry)]
        for family in self.scraped.collect():
            out.append(family.text() if isinstance(family, SymbolGauge) else generate_latest(_Families([family])))
        return b"".join(out)

    def at_scrape(self, build: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        """Gauges built from a component's state when Prometheus scrapes (`Snapshot`). They sit
        in a registry of their own: `total` and `by_label` read the counters without building
        thousands of per-symbol samples each time."""
        self.scraped.register(Snapshot(build))

    def total(self, name: str, **labels: str) -> float:
        """The current value of one sample (0 when it has not been set)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """A counter's values summed by one label, e.g. rejections by reason."""
        out: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and label in sample.labels:
                    key = sample.labels[label]
                    out[key] = out.get(key, 0.0) + sample.value
        return out

    def by_labels(self, name: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        """A counter's values summed by several labels, e.g. errors by (source, reason)."""
        out: dict[tuple[str, ...], float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(label in sample.labels for label in labels):
                    key = tuple(sample.labels[label] for label in labels)
                    out[key] = out.get(key, 0.0) + sample.value
        return out


def gauge(name: str, doc: str, labels: list[str], rows: Iterable[tuple[list[str], float]]) -> GaugeMetricFamily:
    """A gauge family with one sample per (label values, value) row."""
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


class SymbolGauge(GaugeMetricFamily):
    """A gauge with a sample per symbol, written as exposition text in one pass: through
    prometheus_client each sample costs ~8 us, 120 ms a scrape at 5,000 symbols, all of it
    holding up the event loop (and so the cycle).

    :param labels: the label pairs of each row, already as text (`symbol="AAPL",...`); label
        values are validated symbols and fixed names, with nothing to escape.
    :param values: a finite float per row.
    """

    def __init__(self, name: str, doc: str, labels: Sequence[str], values: Sequence[float]) -> None:
        super().__init__(name, doc)
        self._rows = (labels, values)

    def text(self) -> bytes:
        """The family in the Prometheus text format."""
        doc = self.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        name = self.name
        head = f"# HELP {name} {doc}\n# TYPE {name} gauge\n"
        return (head + "".join([f"{name}{{{k}}} {v!r}\n" for k, v in zip(*self._rows, strict=True)])).encode()


class _Families:
    """Some families as a collector, for `generate_latest`."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        """The families."""
        return self.families


class Snapshot:
    """A collector whose gauges are built at each scrape from a component's state (its arrays),
    instead of a gauge child set per symbol every second (~2 us each, under a lock).

    :param build: returns the families, called at each scrape.
    """

    def __init__(self, build: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        self.build = build

    def describe(self) -> list[object]:
        """Nothing up front: the families are built at each scrape."""
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The families as they are now."""
        yield from self.build()

