"""Scan: every symbol's features read back from Redis, per timeframe the rules name, evaluated
by the scanner (sidecar/scanner.py), and the new signals published on the stream.

It reads what Redis holds rather than the cycle's own arrays, so a signal is what a consumer
reading Redis at that moment would have seen. The reads ride on the cycle's write (`reads`): a
timeframe's MGET follows the part of the write that carries its features, on the same
connection, and its values are decoded as soon as they arrive, while Redis applies the rest of
the write. At 5,000 symbols a scan that read after the write took ~12 ms of the cycle: ~6 ms
waiting for the MGET and ~3 ms decoding. A write that read nothing (a cluster member's fenced
write) leaves the scan to read for itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from ..clock import Clock
from ..errors import RedisStoreError
from ..features.codec import FeatureCodec, FeatureFrame
from ..metrics import Metrics
from ..scanner import Scanner
from ..stores import RedisStore
from ..stores.redis_wire import FeatureReads

log = logging.getLogger(__name__)


class Scan:
    """The cycle's last stage.

    :param scanner: the rules and the symbols they watch.
    :param redis: where the features are read and the signals published.
    :param metrics: signals per rule, stale feature rows, scan time, Redis errors.
    :param clock: the time the rules are evaluated at.
    :param codecs: each timeframe's own (a row's layout holds its timeframe's name: "15m" is a
        byte longer than "1m").
    """

    def __init__(self, *, scanner: Scanner, redis: RedisStore, metrics: Metrics, clock: Clock,
                 codecs: Mapping[str, FeatureCodec]) -> None:
        self.scanner, self.redis, self.metrics, self.clock, self.codecs = scanner, redis, metrics, clock, codecs
        self._symbols: Sequence[str] = ()  # the symbols of the frames read with the write
        self._frames: dict[str, FeatureFrame] = {}  # read with this cycle's write, by timeframe
        self.decode_s = 0.0  # spent decoding them (inside the write's Redis stage)

    def reads(self) -> FeatureReads:
        """What the cycle's write reads back for the scan."""
        self._symbols, self._frames, self.decode_s = self.scanner.symbols, {}, 0.0
        return FeatureReads({tf: self._symbols for tf in self.scanner.fields}, self._took)

    def _took(self, timeframe: str, raws: list[bytes | None]) -> None:
        t0 = self.clock.monotonic()
        self._frames[timeframe] = self.codecs[timeframe].decode(raws, self.scanner.fields[timeframe])
        self.decode_s += self.clock.monotonic() - t0

    async def run(self) -> None:
        """Evaluate the frames read with this cycle's write, reading those it did not (or all,
        if the symbols changed since), and publish. A Redis error skips this scan."""
        t0 = self.clock.monotonic()
        frames, self._frames = self._frames, {}
        if self._symbols is not self.scanner.symbols:
            frames = {}
        try:
            for tf, fields in self.scanner.fields.items():
                if tf not in frames:
                    frames[tf] = self.codecs[tf].decode(await self.redis.features(self.scanner.symbols, tf), fields)
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
        self.metrics.scan_seconds.observe(self.clock.monotonic() - t0 + self.decode_s)
