"""Symbols to partitions, and partitions to members.

A symbol's partition is fixed (CRC-32 of its canonical name modulo the partition count), so
every member, reader and the client agree without talking. A partition's owner is chosen by
rendezvous (highest-random-weight) hashing over the live members: each member scores each
partition and the highest score wins, so a member joining takes only its share from the others
and a member leaving gives only its own partitions away.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Sequence


def partition_of(symbol: str, partitions: int) -> int:
    """The partition a canonical symbol belongs to."""
    return zlib.crc32(symbol.encode()) % partitions


def tag(symbol: str, partitions: int) -> str:
    """The Redis hash tag of a symbol's keys: the symbol itself on one daemon, its partition in
    a cluster (so a partition's keys and its fencing token share a slot, and one script writes them)."""
    return f"p{partition_of(symbol, partitions)}" if partitions else symbol


def _score(member: str, partition: int) -> int:
    digest = hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(partition: int, members: Iterable[str]) -> str | None:
    """The member that should own a partition (None when no member is live)."""
    best: tuple[int, str] | None = None
    for m in members:
        s = (_score(m, partition), m)
        if best is None or s > best:
            best = s
    return None if best is None else best[1]


def assignment(partitions: int, members: Sequence[str]) -> dict[int, str]:
    """Every partition's rightful owner among `members`."""
    return {p: o for p in range(partitions) if (o := owner(p, members)) is not None}


def members_of(symbols: Iterable[str], partitions: int) -> dict[int, list[str]]:
    """The symbols of each partition (partitions without symbols left out)."""
    out: dict[int, list[str]] = {}
    for s in symbols:
        out.setdefault(partition_of(s, partitions), []).append(s)
    return out
