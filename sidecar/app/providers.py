"""The four providers' fetchers, each behind its gate (breaker, retries, budgets), built from
the settings: Yahoo first (it also serves the batch quotes), the others as fallbacks in
SIDECAR_SOURCES order. In a cluster a provider key's budgets are shared by every member through
Redis instead of counted here. One lifecycle for them all: start() opens each fetcher's session
and logs which sources are on, close() closes them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..clock import Clock
from ..cluster.budget import SharedBudget
from ..cluster.coordinator import Coordinator
from ..fetchers import AlphaVantageFetcher, HttpFetcher, PolygonFetcher, TwelveDataFetcher, YahooFetcher
from ..metrics import Metrics
from ..resilience import STATES, RetryPolicy
from ..setting_parsers import redact_url
from ..settings import Settings
from ..sources import GuardedSource
from ..stores import RedisStore

log = logging.getLogger(__name__)

FALLBACKS = (TwelveDataFetcher, PolygonFetcher, AlphaVantageFetcher)
"""The providers besides Yahoo, each used when SIDECAR_SOURCES names it."""


@dataclass(slots=True)
class Providers:
    """Every fetcher, and the gated sources the loop goes down.

    :param fetcher: Yahoo's (charts and batch quotes).
    :param fallbacks: the other providers' fetchers, configured or not.
    :param primary: Yahoo behind its gate.
    :param guarded: the fallbacks named in SIDECAR_SOURCES, behind their gates, in its order.
    """

    fetcher: YahooFetcher
    fallbacks: list[HttpFetcher]
    primary: GuardedSource
    guarded: list[GuardedSource]

    @classmethod
    def build(cls, s: Settings, *, clock: Clock, metrics: Metrics, redis: RedisStore, cluster: Coordinator | None,
              on_breaker: Callable[[str, str], None]) -> Providers:
        """The fetchers of the settings' plans behind their gates; `on_breaker(source, state)`
        is told of every breaker transition."""
        plans = s.providers()
        fetcher = YahooFetcher(base_url=plans["yahoo"].base_url, user_agent=s.yahoo_user_agent,
                               timeout_s=s.fetch_timeout_s, max_connections=s.yahoo_max_connections,
                               cookie_url=s.yahoo_cookie_url, clock=clock)
        fallbacks: list[HttpFetcher] = [kind(base_url=plans[kind.name].base_url, api_key=plans[kind.name].api_key,
                          timeout_s=s.fetch_timeout_s, max_connections=8, clock=clock) for kind in FALLBACKS]
        for f in (fetcher, *fallbacks):
            f.delay_s = plans[f.name].delay_s
        retry = RetryPolicy(attempts=s.fetch_retries)

        def guard(f: HttpFetcher) -> GuardedSource:
            plan = plans[f.name]
            local = cluster is None  # a cluster's members share each provider key's budgets in Redis
            g = GuardedSource.build(f, clock=clock, metrics=metrics, per_minute=plan.rate_per_min if local else 0,
                                    per_day=plan.rate_per_day if local else 0, retry=retry,
                                    threshold=s.breaker_threshold, reset_timeout_s=s.breaker_reset_s,
                                    on_transition=lambda _old, new: on_breaker(f.name, new))
            if cluster is not None:
                coordinator = cluster  # narrowed, for the lambda
                g.shared = SharedBudget(redis=redis, name=f.name, per_minute=plan.rate_per_min,
                                        per_day=plan.rate_per_day, member=coordinator.shard_id,
                                        members=lambda: len(coordinator.members), clock=clock)
            metrics.breaker_state.labels(f.name).set(STATES.index(g.breaker.state))  # shown before any change
            return g

        guarded = sorted((guard(f) for f in fallbacks if f.name in s.sources), key=lambda g: s.sources.index(g.name))
        return cls(fetcher, fallbacks, guard(fetcher), guarded)

    @property
    def fetchers(self) -> list[HttpFetcher]:
        """Yahoo's and the fallbacks'."""
        return [self.fetcher, *self.fallbacks]

    async def start(self) -> None:
        """Open every fetcher's session, then say which sources are on."""
        for f in self.fetchers:
            await f.start()
        self.announce()

    def announce(self) -> None:
        """One log line per configured source: enabled at its (redacted) URL, or why it is disabled."""
        for f in (g.fetcher for g in (self.primary, *self.guarded)):
            if f.disabled_reason is not None:
                log.info("source %s disabled: %s", f.name, f.disabled_reason)
            else:
                log.info("source %s enabled at %s", f.name, redact_url(f.base_url))

    async def close(self) -> None:
        """Close every fetcher's session (idempotent; nothing is held to flush)."""
        for f in self.fetchers:
            await f.close()

    def health(self) -> dict[str, object]:
        """Each gated source's snapshot, by name."""
        return {g.name: g.health() for g in (self.primary, *self.guarded)}
