"""Command line: `python -m sidecar run [--symbols A,B]`."""

from __future__ import annotations

import argparse
import logging
import sys

import uvloop

from .errors import SettingsError
from .settings import Settings, render_env_example, render_markdown


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (flags override SIDECAR_* settings)."""
    parser = argparse.ArgumentParser(prog="python -m sidecar", description="Market-data sidecar daemon.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon until SIGINT/SIGTERM")
    run.add_argument("--symbols", help="comma-separated symbols (overrides SIDECAR_SYMBOLS)")
    run.add_argument("--http-port", help="HTTP port (overrides SIDECAR_HTTP_PORT)")
    settings = sub.add_parser("settings", help="print every setting with its default (the text of .env.example)")
    settings.add_argument("--markdown", action="store_true", help="as the README's tables instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for a configuration error)."""
    args = build_parser().parse_args(argv)
    if args.command == "settings":
        print(render_markdown() if args.markdown else render_env_example(), end="")
        return 0
    try:
        settings = Settings.from_env().with_overrides(symbols=args.symbols, http_port=args.http_port)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from .app import Sidecar  # after logging is set up

    try:
        return uvloop.run(Sidecar(settings).run())
    except SettingsError as exc:  # a setting that only fails when used: a path, a port
        print(f"start-up failed: {exc}", file=sys.stderr)
        return 2
