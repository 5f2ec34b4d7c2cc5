"""Scan: every symbol's features read back from Redis, per timeframe the rules name, evaluated
by the scanner (sidecar/scanner.py), and the new signals published on the stream.

It reads what Redis holds rather than the cycle's own arrays, so a signal is what a consumer
reading Redis at that moment would have seen.
"""

from __future__ import annotations

import logging

from ..clock import Clock
from ..errors import RedisStoreError
from ..features.codec import FeatureCodec
from ..metrics import Metrics
from ..scanner import Scanner
from ..stores import RedisStore

log = logging.getLogger(__name__)


class Scan:
    """The cycle's last stage.

    :param scanner: the rules and the symbols they watch.
    :param redis: where the features are read and the signals published.
    :param metrics: signals per rule, stale feature rows, scan time, Redis errors.
    :param clock: the time the rules are evaluated at.
    """

    def __init__(self, *, scanner: Scanner, redis: RedisStore, metrics: Metrics, clock: Clock) -> None:
        self.scanner, self.redis, self.metrics, self.clock = scanner, redis, metrics, clock

    async def run(self, codecs: dict[str, FeatureCodec]) -> None:
        """Read, evaluate, publish. `codecs`: each timeframe's own (a row's layout holds its
        timeframe's name: "15m" is a byte longer than "1m"). A Redis error skips this scan."""
        t0 = self.clock.monotonic()
        try:
            frames = {tf: codecs[tf].decode(await self.redis.features(self.scanner.symbols, tf), fields)
                      for tf, fields in self.scanner.fields.items()}
            result = self.scanner.evaluate(frames, self.clock.time())
            await self.redis.publish_signals([
                {"id": f"{s.symbol}:{s.rule}:{s.ts}:{int(s.time * 1000)}", **s.as_map()} for s in result.signals])
        except RedisStoreError as exc:
            self.metrics.redis_errors.inc()
            log.warning("scan skipped: %s", exc)
            return
        for sig in result.signals:
            self.metrics.signals.labels(sig.rule).inc()
            log.info("signal %s %s (%s) %s ts=%d close=%s", sig.rule, sig.symbol, sig.broker_symbol, sig.timeframe,
                     sig.ts, sig.close)
        self.metrics.features_stale.set(result.stale)
        self.metrics.scan_seconds.observe(self.clock.monotonic() - t0)
