"""SIGKILL a training run between (or during) checkpoint writes: the rerun resumes from the
newest checkpoint and ends with exactly the weights of an uninterrupted run (torch.equal:
models/trainer.py promises bit-exact resumes on CPU at a fixed thread count), for every
variant of every family's tiny testing instance (tests/reliability/_families.py)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.trainer import fit, latest_checkpoint, list_checkpoints, load_checkpoint
from tests.reliability._families import FAMILIES, build

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def assert_identical(a, b, where: str = "checkpoint") -> None:
    """Nested dicts/lists of tensors and plain values, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{index}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def train_in_child(name: str, run_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with open(log, "wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "tests.reliability._train_child", name, str(run_dir)],
                                cwd=PROJECT_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_sigkill_during_training_resumes_to_the_uninterrupted_weights(tmp_path, name):
    family, config = build(name)
    whole = fit(family, config, tmp_path / "whole")
    assert whole.finished and whole.step == config.steps and whole.resumed_from == 0

    run_dir, log = tmp_path / "killed", tmp_path / "child.log"
    folder = run_dir / "checkpoints"
    extra_delay = random.Random(name).uniform(0.0, 0.15)  # a few steps: sometimes mid-write of the next checkpoint
    process = train_in_child(name, run_dir, log)
    deadline = time.monotonic() + 120
    first_seen = None
    while process.poll() is None and time.monotonic() < deadline:
        if first_seen is None and latest_checkpoint(folder) is not None:
            first_seen = time.monotonic()
        if first_seen is not None and time.monotonic() - first_seen >= extra_delay:
            break
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    reached = [step for step, _ in list_checkpoints(folder)]
    assert reached, f"no checkpoint before the kill:\n{log.read_text(errors='replace')}"
    assert max(reached) < config.steps, f"the kill came after the run ended: {reached}"

    family, config = build(name)  # a fresh process's view: new objects, initial weights
    resumed = fit(family, config, run_dir)
    assert (resumed.resumed_from, resumed.step, resumed.finished) == (max(reached), config.steps, True)
    assert not list(folder.glob(".*.tmp")), "a half-written checkpoint was left behind"

    expected = load_checkpoint(latest_checkpoint(tmp_path / "whole" / "checkpoints"))
    actual = load_checkpoint(latest_checkpoint(folder))
    assert expected["step"] == actual["step"] == config.steps
    for part in ("modules", "optimizers", "schedulers", "sampler", "rng"):
        assert_identical(expected[part], actual[part], part)
