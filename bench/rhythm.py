"""The same stages back to back and once a second, in one process with nothing else running:

    .venv/bin/python -m bench.rhythm --rounds 25

The daemon runs ~50 ms of each second and idles the rest, so every cycle starts on caches
(data, code, branch history) the machine used for something else meanwhile. Two stages are run
here each way, with the same inputs: parse (the local exchange's ten 500-symbol batch quote
bodies) and the higher timeframes' step (`bench/test_stages.py`'s 5,000 symbols, five
timeframes). Each is measured as rounds run back to back, as rounds 0.95 s apart (the cycle's
rhythm), and as rounds 0.95 s apart each preceded by 20 ms of spinning (a core kept busy is
not what they miss). Reported: the medians in ms, and the ratios to back to back.
"""

from __future__ import annotations

import argparse
import statistics
import time

from sidecar.cycle.batch import Batch
from sidecar.exchange.ledger import Ledger
from sidecar.exchange.market import Market
from sidecar.exchange.quote import BatchQuotes
from sidecar.exchange.reference import Reference
from sidecar.fetchers.yahoo import parse_quote_body

from .servers import save_report
from .test_stages import FORMING, INFOS, T0, N, _batch, higher_timeframes


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def run(rounds: int) -> dict[str, float]:
    """Median ms per stage for each way of running the rounds, and the ratios."""
    quotes = BatchQuotes(Market(always_open=True), Reference(42), Ledger())
    bodies = [quotes.body(tuple(info.yahoo for info in INFOS[k:k + 500]), T0 + 5) for k in range(0, N, 500)]
    _table, higher = higher_timeframes()
    for minute in range(120):
        higher.step(_batch(minute), Batch.empty(), T0 + 60 * minute + 61.0)
    second = iter(range(10**9))

    def parse() -> None:
        for k, body in enumerate(bodies):
            parse_quote_body(body, INFOS[500 * k:500 * k + 500])

    def step() -> None:
        k = next(second)
        higher.step(Batch.empty(), _batch(120 + k // 60, FORMING), T0 + 60 * 120 + k % 60 + 1.0)

    out: dict[str, float] = {}
    for way, pause, spin in (("back_to_back", 0.0, 0.0), ("once_a_second", 0.95, 0.0),
                             ("once_a_second_after_a_spin", 0.95, 0.02)):
        for name, stage in (("parse", parse), ("timeframes", step)):
            times = []
            for _ in range(rounds):
                time.sleep(pause)
                _spin(spin)
                t0 = time.perf_counter()
                stage()
                times.append(time.perf_counter() - t0)
            out[f"{name}_{way}_ms"] = round(statistics.median(times) * 1000, 2)
    for name in ("parse", "timeframes"):
        for way in ("once_a_second", "once_a_second_after_a_spin"):
            out[f"{name}_{way}_ratio"] = round(out[f"{name}_{way}_ms"] / out[f"{name}_back_to_back_ms"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    save_report({"symbols": N, "rounds": args.rounds, **run(args.rounds)}, "rhythm",
                f"python -m bench.rhythm --rounds {args.rounds}")


if __name__ == "__main__":
    main()
