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

from .servers import save_report
from .test_stages import N, exchange_bodies, parse_all, timeframes_second


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def run(rounds: int) -> dict[str, float]:
    """Median ms per stage for each way of running the rounds, and the ratios."""
    bodies, step = exchange_bodies(), timeframes_second()
    out: dict[str, float] = {}
    for way, pause, spin in (("back_to_back", 0.0, 0.0), ("once_a_second", 0.95, 0.0),
                             ("once_a_second_after_a_spin", 0.95, 0.02)):
        for name, stage in (("parse", lambda: parse_all(bodies)), ("timeframes", step)):
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
