"""How the exact near-duplicate search grows with the corpus: real small pictures against noise.

    .venv/bin/python -m bench.near_search [--sizes 5000,10000,20000,40000,70000] [--repeats 3]

Real pictures: Fashion-MNIST's 70,000 (Debian's dataset-fashion-mnist, train and test), in a
seeded random order, as the image corpus makes their thumbnails. Noise: as many uniform random
thumbnails, the pictures bench/scale.py writes. For each size, all pairs among the first n are
searched once (`corpora.grouping.near_pairs`, as a full ingest does batch by batch). Columns:
the share of pairs whose pixel sums lie within the search's window (what the sort by sum
cannot rule out), the near pairs found, the median CPU seconds over --repeats, and the growth
of those seconds against the size before as an exponent of n (2 would be quadratic).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from corpora.defaults.images import read_idx
from corpora.grouping import THUMBNAIL_SIDE, near_pairs
from corpora.images import NEAR_IDENTICAL_RMS, thumbnail

SEED = 0


def fashion_thumbnails() -> np.ndarray:
    pictures = np.concatenate([read_idx("train")[0], read_idx("test")[0]])
    order = np.random.default_rng(SEED).permutation(len(pictures))
    return np.stack([thumbnail(pictures[i][:, :, None]) for i in order])


def noise_thumbnails(count: int) -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, 256, (count, THUMBNAIL_SIDE**2), dtype=np.uint8)


def share_in_sum_window(rows: np.ndarray) -> float:
    sums = np.sort(rows.astype(np.int64).sum(1))
    window = NEAR_IDENTICAL_RMS * rows.shape[1]
    later = np.searchsorted(sums, sums + window, side="right") - np.arange(len(sums)) - 1
    return float(later.sum() / (len(sums) * (len(sums) - 1) / 2))


def search_cpu_seconds(rows: np.ndarray) -> tuple[int, float]:
    start = time.process_time()
    found = sum(len(queries) for queries, _ in near_pairs(rows, rows, NEAR_IDENTICAL_RMS, same_set=True))
    return found, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,10000,20000,40000,70000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    real = fashion_thumbnails()
    corpora = {"fashion-mnist": real, "noise": noise_thumbnails(len(real))}
    print("| pictures | n | pairs in the sum window | near pairs | search CPU s | growth exponent |")
    print("|---|---|---|---|---|---|")
    for name, rows in corpora.items():
        before = None
        for size in (s for s in sizes if s <= len(rows)):
            subset = rows[:size]
            runs = [search_cpu_seconds(subset) for _ in range(args.repeats)]
            seconds = statistics.median(cpu for _, cpu in runs)
            growth = f"{math.log(seconds / before[1]) / math.log(size / before[0]):.2f}" if before else ""
            print(f"| {name} | {size:,} | {share_in_sum_window(subset):.3f} | {runs[0][0]} | {seconds:.2f} | {growth} |",
                  flush=True)
            before = (size, seconds)


if __name__ == "__main__":
    main()
