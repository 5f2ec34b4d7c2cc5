"""`python -m sidecar.exchange`: run the local exchange on its own."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import uvloop

from ..errors import SettingsError
from ..settings import ExchangeSettings
from .market import Market
from .server import Exchange

log = logging.getLogger("sidecar.exchange")


async def serve(settings: ExchangeSettings) -> None:
    """Serve until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exchange = Exchange(Market(settings.seed, always_open=settings.always_open))
    await exchange.start(settings.host, settings.port)
    url = exchange.url
    log.info("local exchange listening url=%s seed=%d always_open=%s", url, settings.seed, settings.always_open)
    try:
        await stop.wait()
    finally:
        await exchange.close()
        log.info("local exchange stopped")


def main(argv: list[str] | None = None) -> int:
    """Parse flags over the SIDECAR_EXCHANGE_* settings and serve."""
    parser = argparse.ArgumentParser(prog="python -m sidecar.exchange", description=__doc__)
    parser.add_argument("--host", help="listen address (SIDECAR_EXCHANGE_HOST)")
    parser.add_argument("--port", help="listen port (SIDECAR_EXCHANGE_PORT)")
    parser.add_argument("--seed", help="market seed (SIDECAR_EXCHANGE_SEED)")
    parser.add_argument("--always-open", action="store_const", const="true",
                        help="every symbol trades around the clock (SIDECAR_EXCHANGE_ALWAYS_OPEN)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = ExchangeSettings.from_env().with_overrides(
            host=args.host, port=args.port, seed=args.seed, always_open=args.always_open)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    uvloop.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
