"""`python -m tests.reliability._train_child NAME RUN_DIR`: trains a tiny family from
tests/reliability/_families.py into RUN_DIR (resuming from its checkpoints), on one thread."""
from __future__ import annotations

import sys

import torch


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)  # bit-exact resume is promised at a fixed thread count
    from models.trainer import fit
    from tests.reliability._families import build

    family, config = build(argv[1])
    result = fit(family, config, argv[2])
    print(result.step, result.resumed_from, flush=True)


if __name__ == "__main__":
    main(sys.argv)
