"""The Redis store's streams and side keys: signals and events on the signals stream (each also
PUBLISHed on its channel), the earnings flags, the dead-letter hash and the quarantine list.
Mixed into `RedisStore`, whose round trips (`_run`) and guarded reads (`guard`) they use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

import orjson

from .redis_wire import RedisKeys


class _Store(Protocol):
    """What these calls use of the store."""

    keys: RedisKeys
    client: Any
    signals_maxlen: int

    async def _run(self, commands: Sequence[tuple[bytes, ...]], what: str,
                   fenced_ok: bool = False) -> list[object]: ...

    async def guard(self, call: Awaitable[Any], what: str = "read") -> Any: ...


class RedisStreams:
    """Signals, events, earnings flags, dead letters, quarantine (see the module's docstring)."""

    async def publish_signals(self: _Store, signals: Sequence[dict[str, object]]) -> None:
        """Append signals to the stream and publish each on the channel, in one round trip.
        Each carries an `id` so a consumer can drop the copy a re-sent pipeline may add."""
        await _append(self, b"signal", self.keys.signals(), signals)

    async def publish_events(self: _Store, events: Sequence[dict[str, object]]) -> None:
        """Append events (end of day, earnings) to the signals stream, field `event`, and publish
        each on the `events` channel, in one round trip; each carries an `id` like a signal."""
        await _append(self, b"event", self.keys.events(), events)

    async def earnings_flags(self: _Store, flags: dict[str, dict[str, object]], clear: Sequence[str], ttl_s: int) -> None:
        """Set symbols' earnings flags (each expiring after `ttl_s`) and delete others', in one round trip."""
        commands: list[tuple[bytes, ...]] = [
            (b"SET", self.keys.earnings(s).encode(), orjson.dumps(v), b"EX", b"%d" % ttl_s) for s, v in flags.items()]
        commands += [(b"DEL", self.keys.earnings(s).encode()) for s in clear]  # one key a command: cluster-safe
        if commands:
            await self._run(commands, "earnings flags")

    async def dead_letters(self: _Store, add: dict[str, dict[str, object]], remove: Sequence[str]) -> None:
        """Put symbols on (with the reason) or take them off the dead-letter hash."""
        key = self.keys.deadletter().encode()
        commands: list[tuple[bytes, ...]] = []
        if add:
            commands.append((b"HSET", key, *(x for s, v in add.items() for x in (s.encode(), orjson.dumps(v)))))
        if remove:
            commands.append((b"HDEL", key, *(s.encode() for s in remove)))
        if commands:
            await self._run(commands, "dead-letter update")

    async def quarantine(self: _Store, entries: Sequence[dict[str, object]], keep: int = 1000) -> None:
        """Record bars the spike filter held out (the list keeps the newest `keep`)."""
        key = self.keys.quarantine().encode()
        await self._run([(b"LPUSH", key, *(orjson.dumps(e) for e in entries)),
                         (b"LTRIM", key, b"0", b"%d" % (keep - 1))], "quarantine write")

    async def signals(self: _Store, since_ms: int, limit: int) -> list[dict[str, object]]:
        """Signals published at or after `since_ms` (epoch milliseconds), oldest first."""
        entries = await self.guard(self.client.xrange(self.keys.signals(), min=f"{since_ms}-0", count=limit),
                                   "reading signals")
        return [_entry(sid, fields) for sid, fields in entries]

    async def newest_signals(self: _Store, count: int) -> list[dict[str, object]]:
        """The newest `count` signals and events, newest first."""
        entries = await self.guard(self.client.xrevrange(self.keys.signals(), count=count), "reading signals")
        return [_entry(sid, fields) for sid, fields in entries]


async def _append(store: _Store, field: bytes, channel: str, items: Sequence[dict[str, object]]) -> None:
    """Each item as JSON: XADD to the signals stream under `field`, PUBLISH on `channel`."""
    if not items:
        return
    stream, maxlen = store.keys.signals().encode(), b"%d" % store.signals_maxlen
    commands: list[tuple[bytes, ...]] = []
    for item in items:
        body = orjson.dumps(item)
        commands += ((b"XADD", stream, b"MAXLEN", b"~", maxlen, b"*", field, body),
                     (b"PUBLISH", channel.encode(), body))
    await store._run(commands, f"publishing {len(items)} {field.decode()}s")


def _entry(sid: bytes, fields: dict[bytes, bytes]) -> dict[str, object]:
    """A signals-stream entry as a dict: its id, whether it is a signal or an event, its body."""
    kind = "event" if b"event" in fields else "signal"
    return {"stream_id": sid.decode(), "kind": kind, **orjson.loads(fields[kind.encode()])}
