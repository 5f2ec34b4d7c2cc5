"""Corporate actions on the local exchange: dividends, and the splits the market applies to
its prices, served as Yahoo serves them on the chart (providers.md 8.2): `events` with
`dividends` and `splits` keyed by their date (the ex-date's session open), and `adjclose` on
daily bars.

Six equities in ten pay a dividend every 91 days (a per-symbol phase and yield, 0.2-1 % a
quarter of the close before the ex-date, rounded to the cent); one in twenty split once
(`Market.splits`). Tests add their own through the admin API. A dividend does not move the
simulated price (the walk is the as-traded price); it only enters the adjustment.

`adjclose` is the close times the product, over every action after the bar up to now, of
1 / split ratio and 1 - amount / (the close of the session before the ex-date): the
multiplicative back-adjustment Yahoo and CRSP use.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import orjson
from aiohttp import web

from ..clock import Clock
from ..symbols import AssetClass
from . import sessions
from .market import Market
from .noise import key, uniform
from .sessions import DAY

FIRST_DAY = 10957  # 2000-01-01: the seeded schedules start here
QUARTER_DAYS = 91


class Actions:
    """Dividends and splits of every symbol of a market.

    :param market: prices (for amounts and adjustment) and splits.
    :param clock: the admin listing's default end.
    """

    def __init__(self, market: Market, clock: Clock) -> None:
        self.market, self.clock = market, clock
        self.extra_dividends: dict[str, list[tuple[int, float]]] = {}  # set through the admin API
        self._amount = lru_cache(maxsize=65536)(self._seeded_amount)

    def dividends(self, symbol: str, start: int, end: int) -> list[tuple[int, float]]:
        """(ex-date session open, amount per share) of the dividends with dates in [start, end)."""
        out = [(t, a) for t, a in self.extra_dividends.get(symbol, []) if start <= t < end]
        m = self.market
        if m.profile(symbol).asset_class is AssetClass.EQUITY:
            u = uniform(key(m.seed, symbol, "div"), np.arange(3))
            if u[0] < 0.6:
                phase = int(u[1] * QUARTER_DAYS)
                first = max(0, (start // DAY - 15 - FIRST_DAY - phase) // QUARTER_DAYS)
                for k in range(first, (end // DAY - FIRST_DAY - phase) // QUARTER_DAYS + 1):
                    when = sessions.first_session_open(FIRST_DAY + phase + k * QUARTER_DAYS)
                    if start <= when < end:
                        out.append((when, self._amount(symbol, when, 0.002 + 0.008 * float(u[2]))))
        return sorted(out)

    def changed(self) -> None:
        """Forget the amounts computed so far (an added split moves the closes they come from)."""
        self._amount.cache_clear()

    def _seeded_amount(self, symbol: str, when: int, quarterly_yield: float) -> float:
        return round(self.close_before(symbol, when) * quarterly_yield, 2)

    def close_before(self, symbol: str, when: int) -> float:
        """The last traded close before `when` (the session before the ex-date)."""
        return self.market.last_trade(symbol, when)[0]

    def splits(self, symbol: str, start: int, end: int) -> list[tuple[int, float]]:
        """(ex-date session open, new shares per old share) of the splits dated in [start, end)."""
        return [(t, r) for t, r in self.market.splits(symbol) if start <= t < end]

    def adjustment(self, symbol: str, ts: np.ndarray, now: int) -> np.ndarray:
        """Each bar's back-adjustment factor as of `now` (1 after the last action)."""
        ts = np.asarray(ts, dtype=np.int64)
        factor = np.ones(len(ts))
        first = int(ts.min()) if len(ts) else now
        for when, ratio in self.splits(symbol, first + 1, now + 1):
            factor[ts < when] /= ratio
        for when, amount in self.dividends(symbol, first + 1, now + 1):
            factor[ts < when] *= 1.0 - amount / self.close_before(symbol, when)
        return factor

    def events(self, symbol: str, start: int, end: int) -> dict[str, dict[str, dict[str, object]]]:
        """Yahoo's chart `events` for [start, end) (empty groups left out)."""
        out: dict[str, dict[str, dict[str, object]]] = {}
        divs = self.dividends(symbol, start, end)
        if divs:
            out["dividends"] = {str(t): {"amount": a, "date": t} for t, a in divs}
        splits = self.splits(symbol, start, end)
        if splits:
            out["splits"] = {str(t): {"date": t, "numerator": _ratio(r)[0], "denominator": _ratio(r)[1],
                                      "splitRatio": f"{_ratio(r)[0]}:{_ratio(r)[1]}"} for t, r in splits}
        return out


def _ratio(ratio: float) -> tuple[int, int]:
    """A split ratio as Yahoo's numerator and denominator (1:10 for a reverse split of 0.1)."""
    if ratio >= 1:
        return int(round(ratio)), 1
    return 1, int(round(1 / ratio))


def mount(app: web.Application, actions: Actions) -> None:
    """The admin endpoints: `GET /_exchange/actions?symbol=S&start=&end=` lists a symbol's
    dividends and splits dated in [start, end) (default: all of them up to now), with each
    one's close before; `POST /_exchange/actions` adds one:
    `{"symbol", "kind": "dividend", "date", "amount"}` or `{"symbol", "kind": "split", "date", "ratio"}`."""

    async def listing(request: web.Request) -> web.Response:
        q = request.query
        try:
            symbol = q["symbol"]
            start, end = int(q.get("start", 0)), int(q.get("end", int(actions.clock.time()) + 1))
        except (KeyError, ValueError):
            raise web.HTTPBadRequest(text="expected symbol, and start and end as unix seconds") from None
        rows = [{"kind": "dividend", "date": t, "amount": a, "close_before": actions.close_before(symbol, t)}
                for t, a in actions.dividends(symbol, start, end)]
        rows += [{"kind": "split", "date": t, "ratio": r, "close_before": actions.close_before(symbol, t)}
                 for t, r in actions.splits(symbol, start, end)]
        return web.json_response({"symbol": symbol, "actions": sorted(rows, key=lambda r: r["date"])})

    async def add(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            symbol, kind, when = str(body["symbol"]), str(body["kind"]), int(body["date"])
            value = float(body["amount"] if kind == "dividend" else body["ratio"])
            if kind not in ("dividend", "split") or not value > 0:
                raise ValueError(kind)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f'expected {{"symbol", "kind": "dividend"|"split", "date", '
                                          f'"amount"|"ratio"}}: {exc!r}') from None
        if kind == "dividend":
            actions.extra_dividends.setdefault(symbol, []).append((when, value))
        else:
            actions.market.extra_splits.setdefault(symbol, []).append((when, value))
        actions.changed()
        return web.json_response({"added": kind, "symbol": symbol, "date": when})

    app.router.add_get("/_exchange/actions", listing)
    app.router.add_post("/_exchange/actions", add)
