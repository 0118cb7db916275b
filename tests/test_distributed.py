"""Data-parallel training under torchrun (models/distributed.py and `fit(distributed=...)`), with
two real gloo processes on this machine, and the trainer's optional torch.compile.

The ranks run tests/ddp_worker.py, which writes each rank's final weights and what it did.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.distributed import Distributed
from models.trainer import TrainerConfig, fit, list_checkpoints, load_checkpoint
from tests.ddp_worker import RegressionFamily, trainer_config
from tests.reliability.test_kill_during_training import assert_identical

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RANKS = 2
# Two ranks average two 4-item mean gradients where one process takes one 8-item mean: the
# same sum in another order, so float32 rounding differs by ~1e-7 (measured: 1.2e-7 after 12
# AdamW steps). An averaging or slicing bug moves weights by ~1e-2 or more.
SINGLE_PROCESS_ATOL = 1e-6


def train_on_two_ranks(family: str, run_dir: Path, out_dir: Path, steps: int, *options: str) -> list[dict]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={RANKS}",
               "--log-dir", str(out_dir / "torchrun"),
               "-m", "tests.ddp_worker", family, str(run_dir), str(out_dir), str(steps), *options]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout}\n{done.stderr}"
    return [torch.load(out_dir / f"rank-{rank}.pt", weights_only=True) for rank in range(RANKS)]


def test_two_ranks_train_like_one_process_on_the_global_batch(tmp_path):
    steps = 12  # three epochs of 32 items in global batches of 8
    first, second = train_on_two_ranks("regression", tmp_path / "run", tmp_path / "out", steps)

    # rank 1 started from other weights (ddp_worker.disturb): the broadcast and the averaged
    # steps make it end bit for bit where rank 0 does, the drifting buffer included
    assert_identical(first["modules"], second["modules"], "rank 1 vs rank 0")

    reference = RegressionFamily()
    initial = {name: value.clone() for name, value in reference.model.state_dict().items()}
    single = fit(reference, trainer_config(steps), tmp_path / "single")
    assert single.step == first["step"] == second["step"] == steps
    distributed_weights = first["modules"]["model"]
    for name, parameter in reference.model.named_parameters():
        torch.testing.assert_close(distributed_weights[name], parameter.detach(), atol=SINGLE_PROCESS_ATOL, rtol=0,
                                   msg=lambda message, name=name: f"{name}: {message}")
    for name in ("body.0.weight", "special_bias"):  # special_bias: a gradient on some ranks, None on others
        assert not torch.allclose(distributed_weights[name], initial[name], atol=1e-3), f"{name} did not train"
    # no gradient on any rank: AdamW must skip it, as one process does, instead of decaying it
    assert torch.equal(distributed_weights["unused"], initial["unused"])

    state = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1][1])
    assert len(state["rank_rng"]) == RANKS
    assert not torch.equal(state["rank_rng"][0]["torch"], state["rank_rng"][1]["torch"]), "ranks share one noise stream"
    assert torch.equal(state["rank_rng"][0]["torch"], state["rng"]["torch"])


def test_music_vae_on_two_ranks_checkpoints_once_and_resumes_bit_exact(tmp_path):
    steps = 4
    straight = train_on_two_ranks("music_vae", tmp_path / "straight", tmp_path / "straight-out", steps)
    assert_identical(straight[0]["modules"], straight[1]["modules"], "rank 1 vs rank 0")
    expected_names = [f"step-{step:06d}.pt" for step in range(1, steps + 1)]
    assert straight[0]["saves"] == expected_names and straight[1]["saves"] == []  # rank 0 alone writes, once a step
    assert straight[0]["logged"] == list(range(1, steps + 1)) and straight[1]["logged"] == []
    folder = tmp_path / "straight" / "checkpoints"
    assert [path.name for _, path in list_checkpoints(folder)] == expected_names
    final = load_checkpoint(folder / expected_names[-1])
    assert_identical(final["modules"], straight[0]["modules"], "final checkpoint vs rank 0")

    # rank 1 alone asks to stop after 2 steps: both stop there (no deadlock), and a rerun of
    # the same two ranks resumes each rank's own RNG stream to the uninterrupted weights
    split_dir = tmp_path / "split"
    stopped = train_on_two_ranks("music_vae", split_dir, tmp_path / "stopped-out", steps, "--rank1-stops-after", "2")
    assert [(rank["step"], rank["finished"]) for rank in stopped] == [(2, False), (2, False)]
    resumed = train_on_two_ranks("music_vae", split_dir, tmp_path / "resumed-out", steps)
    assert [(rank["resumed_from"], rank["step"]) for rank in resumed] == [(2, steps), (2, steps)]
    resumed_final = load_checkpoint(split_dir / "checkpoints" / expected_names[-1])
    for part in ("modules", "optimizers", "schedulers", "sampler", "rng", "rank_rng"):
        assert_identical(final[part], resumed_final[part], part)


def test_the_global_batch_must_divide_by_the_world_size(tmp_path):
    config = replace(trainer_config(steps=1), batch_size=7)
    with pytest.raises(ValueError, match="divide by the world size 2"):
        fit(RegressionFamily(), config, tmp_path, distributed=Distributed(rank=0, world_size=2))


def test_compile_on_still_trains(tmp_path):
    family = RegressionFamily()
    initial = family.model.body[0].weight.detach().clone()
    result = fit(family, replace(trainer_config(steps=3), compile="on"), tmp_path)
    assert result.compiled and result.finished
    assert not torch.equal(family.model.body[0].weight, initial)
    assert set(load_checkpoint(result.checkpoint)["modules"]["model"]) == set(family.model.state_dict())
    assert not fit(RegressionFamily(), TrainerConfig(steps=1, batch_size=8), tmp_path / "eager").compiled
