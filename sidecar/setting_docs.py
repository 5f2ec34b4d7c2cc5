"""The settings written out for people: `.env.example` (every setting, its meaning and its
default; `python -m sidecar settings`) and the README's tables (`--markdown`), both made
from the fields of `Settings` and `ExchangeSettings`, so neither can drift from the code.
"""

from __future__ import annotations

from dataclasses import fields

import orjson

from .features.config import FeatureConfig
from .settings import ExchangeSettings, Settings


def _default_text(value: object) -> str:
    """A default as it is written in the environment."""
    if isinstance(value, FeatureConfig):
        return ""  # empty means the defaults
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple) and value and len(value[0]) == 3:  # price bounds
        return orjson.dumps({a: [lo, hi] for a, lo, hi in value}).decode()
    if isinstance(value, tuple):
        return ",".join("=".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in value)
    return str(value)


def render_env_example() -> str:
    """The text of `.env.example`: every setting, its meaning and its default."""
    lines = ["# Every setting of the sidecar, with its default. Copy to .env and uncomment what you change;",
             "# the environment wins over .env. Regenerate with: python -m sidecar settings > .env.example", ""]
    for title, cls in (("The daemon (python -m sidecar run)", Settings),
                       ("The local exchange (python -m sidecar.exchange)", ExchangeSettings)):
        lines.append(f"## {title}")
        defaults = cls()
        for f in fields(cls):
            lines.append(f"# {f.metadata['env']}: {f.metadata['help']}")
            lines.append(f"# {f.metadata['env']}={_default_text(getattr(defaults, f.name))}")
        lines.append("")
    return "\n".join(lines)


def render_markdown() -> str:
    """The README's settings tables: every setting, its default and its meaning."""
    out = []
    for cls in (Settings, ExchangeSettings):
        out.append("| setting | default | meaning |\n|---|---|---|")
        defaults = cls()
        for f in fields(cls):
            text = _default_text(getattr(defaults, f.name))
            if len(text) > 40:
                text = "see below" if f.name == "signal_rules" else "a desktop browser's"
            cell = f"`{text}`" if text else "(empty)"
            out.append(f"| `{f.metadata['env']}` | {cell} | {f.metadata['help'].replace('|', '/')} |")
        out.append("")
    return "\n".join(out)
