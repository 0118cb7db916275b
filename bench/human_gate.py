"""How often the human gate blocks a challenger, by the true preference and the number of votes.

Simulates pairwise votes between a champion and a challenger whose true Bradley-Terry
difference is known, fits them as `human_preference` does (ratings/preference.py) and applies
the gate's test (models/champion.py). A true difference of 0 gives the false-block rate, which
should stay at or below alpha. Seeded: the same table every run.

    .venv/bin/python bench/human_gate.py [--repeats 400]
"""
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.champion import HUMAN_FAIL, HumanGate  # noqa: E402
from ratings.preference import evidence, fit_family  # noqa: E402
from ratings.store import PairwiseVote  # noqa: E402

DIFFERENCES = (0.0, -0.25, -0.5, -1.0)  # challenger minus champion, log-odds
VOTES = (20, 40, 100)


def block_rate(difference: float, votes: int, repeats: int, gate: HumanGate, rng: np.random.Generator) -> float:
    challenger_wins = 1 / (1 + math.exp(-difference))
    blocked = 0
    for _ in range(repeats):
        won = rng.random(votes) < challenger_wins
        ballots = [PairwiseVote("f", "2", 0, "1", 1, "d", "d", "r") if w else PairwiseVote("f", "1", 0, "2", 1, "d", "d", "r")
                   for w in won]
        blocked += gate.judge(evidence(fit_family("f", ballots), "2", "1"))[0] == HUMAN_FAIL
    return blocked / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=400)
    args = parser.parse_args()
    gate = HumanGate(enabled=True, alpha=0.05, min_votes=1)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    print(f"share of challengers blocked (alpha {gate.alpha}, {args.repeats} simulated vote sets per cell)")
    print("true difference | " + " | ".join(f"{n} votes" for n in VOTES))
    for difference in DIFFERENCES:
        rates = [block_rate(difference, n, args.repeats, gate, rng) for n in VOTES]
        print(f"{difference:+.2f} ({1 / (1 + math.exp(-difference)):.0%} wins) | " + " | ".join(f"{r:.3f}" for r in rates))
    print(f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
