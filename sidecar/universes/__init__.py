"""Named universes: lists of symbols to follow by name ("the sector ETFs", "the dev top 10").

The shipped ones are the `.txt` files next to this module; users add their own (or replace a
shipped one) as `<name>.txt` in `SIDECAR_UNIVERSES_DIR`. A file holds one symbol a line; `#`
starts a comment, blank lines are ignored. Every member passes the same validation as any
symbol from outside before it is used.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import SymbolError
from ..symbols import lookup

SHIPPED = Path(__file__).resolve().parent
_NAME = re.compile(r"[a-z0-9_]{1,40}")


def parse_names(raw: str) -> tuple[str, ...]:
    """`dev_top_10,dev_etfs` -> the names, checked for form (not yet for existence)."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in raw.split(",") if n.strip()))
    bad = [n for n in names if not _NAME.fullmatch(n)]
    if bad:
        raise ValueError(f"a universe name is 1-40 of a-z, 0-9 and '_', got {bad[0][:40]!r}")
    return names


def known(user_dir: Path | None = None) -> dict[str, Path]:
    """Every universe by name: the shipped ones, then the user's (which win)."""
    out = {p.stem: p for p in sorted(SHIPPED.glob("*.txt"))}
    if user_dir is not None and user_dir.is_dir():
        out.update({p.stem: p for p in sorted(user_dir.glob("*.txt")) if _NAME.fullmatch(p.stem)})
    return out


def members(name: str, user_dir: Path | None = None) -> tuple[str, ...]:
    """A universe's canonical symbols, in file order; ValueError naming the known universes for
    an unknown name, or every bad line (file and line number) of a broken file."""
    files = known(user_dir)
    path = files.get(name)
    if path is None:
        raise ValueError(f"unknown universe {name!r}; known: {', '.join(files)}")
    out: dict[str, None] = {}
    bad = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            out[lookup(text).symbol] = None
        except SymbolError as exc:
            bad.append(f"{path.name}:{number}: {exc}")
    if bad:
        raise ValueError(f"universe {name!r} has bad lines: " + "; ".join(bad))
    if not out:
        raise ValueError(f"universe {name!r} ({path}) lists no symbols")
    return tuple(out)


def resolve(names: Iterable[str], user_dir: Path | None = None) -> tuple[str, ...]:
    """The union of some universes' members, in order, each symbol once."""
    out: dict[str, None] = {}
    for name in names:
        out.update(dict.fromkeys(members(name, user_dir)))
    return tuple(out)
