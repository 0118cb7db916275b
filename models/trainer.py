"""The training loop every family shares: resume, step, log, checkpoint, stop on a budget.

A family (image GAN, music VAE, ...) supplies only what is its own: its modules and
optimizers, its training rows (models.batches: in memory or streamed from shards), how a batch
of their columns becomes its input, and one training step. Everything a run promises lives
here once:

- a killed run resumes from the newest checkpoint in its run folder, with model, optimizer,
  scheduler, step, data position and every RNG state restored, so it ends with the same
  weights as an uninterrupted run (bit-exact on CPU at a fixed thread count; see `fit`);
- checkpoints are written atomically and read with `torch.load(weights_only=True)`, so every
  value in them is a tensor or a plain Python value, never a pickled object;
- a run can stop early on a wall-clock budget or a caller's `should_stop`, and is resumable;
- under torchrun, the same loop trains data-parallel over several processes (see
  models/distributed.py and `fit`'s `distributed`).

Read `fit` top to bottom; the helpers above it are small on purpose.
"""
from __future__ import annotations

import math
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from common.atomic import atomic_write, remove_stale_temporaries
from models.batches import BatchSource, Rows
from models.distributed import (Distributed, all_gather_objects, any_rank, average_gradients_before_steps, barrier,
                                broadcast_float_buffers, broadcast_modules, check_ready)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)\.pt$")
CHECKPOINT_FORMAT = "atelier.checkpoint/1"
# Rank r seeds its RNGs with seed + r * stride: rank 0 keeps the single-process stream, and the
# other ranks' streams stay clear of the runs with nearby seeds.
RANK_SEED_STRIDE = 1_000_003

Autocast = Callable[[], AbstractContextManager]
LogFn = Callable[[int, dict], None]


# --- configuration -----------------------------------------------------------------------


@dataclass
class TrainerConfig:
    steps: int = 1000  # total optimizer steps of the run (one batch per step)
    batch_size: int = 64
    checkpoint_every: int = 500  # also written at the end and when a budget stops the run
    log_every: int = 50
    keep_checkpoints: int = 3  # the newest N stay on disk; a killed run loses at most N-1
    seed: int = 0
    bf16: str = "auto"  # "auto": on CUDA and on CPUs with native bf16 (see bf16_supported); "on"; "off"
    channels_last: str = "auto"  # "auto": on CUDA and CPU, whose convs gain from NHWC; "on"; "off"
    max_minutes: float = 0.0  # wall-clock budget; the run checkpoints and stops when spent; 0: none
    compile: str = "off"  # torch.compile every module: "auto": on CUDA only; "on"; "off"

    def to_dict(self) -> dict:
        return asdict(self)


# --- the family interface ------------------------------------------------------------------


@runtime_checkable
class Family(Protocol):
    """What a model family gives the trainer. Schedulers and EMA copies are optional:
    an EMA model is just one more entry of `modules()`."""

    rows: Rows  # the training split the trainer draws batches from (models.batches)

    def modules(self) -> dict[str, nn.Module]: ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def schedulers(self) -> dict[str, Any]: ...

    def to(self, device: torch.device, channels_last: bool) -> None: ...

    def make_batch(self, columns: dict[str, torch.Tensor], device: torch.device) -> Any: ...

    def train_step(self, batch: Any, step: int, autocast: Autocast) -> dict[str, float]: ...


# --- seeds and RNG state -------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rank_seed(seed: int, rank: int) -> int:
    return seed + RANK_SEED_STRIDE * rank


def rng_state() -> dict:
    """Every global RNG as plain values and tensors, so `weights_only=True` can load it."""
    version, mt_state, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(mt_state), "gauss_next": gauss_next},
        "numpy": {
            "kind": str(kind),
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], np.asarray(npy["keys"], dtype=np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    # .cpu(): a checkpoint loaded with map_location="cuda" brings the states along, but the
    # generators take only CPU byte tensors
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        # a checkpoint from a bigger machine: restore the devices this one has
        cuda_states = [cuda_state.cpu() for cuda_state in state["cuda"]][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)


# --- checkpoints ---------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}.pt"


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def save_checkpoint(path: str | os.PathLike, state: dict, keep: int | None = None) -> Path:
    """Write `state` atomically to `path`; with `keep`, prune all but the newest `keep` in its folder."""
    path = atomic_write(path, lambda file: torch.save(state, file))
    if keep is not None:
        for _, old in list_checkpoints(path.parent)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict:
    # Never weights_only=False: a checkpoint is data, and loading one must not run code.
    return torch.load(path, map_location=map_location, weights_only=True)


# --- precision and layout ------------------------------------------------------------------


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 matmul: CUDA devices that report it, and CPUs with AVX512-BF16 or AMX.

    Without those instructions, CPU bf16 is emulated and slower than fp32, so "auto" keeps
    fp32 there. torch.cpu._is_avx512_bf16_supported / _is_amx_tile_supported are private
    helpers (torch 2.x); if they vanish we fall back to fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks if check is not None)
    return False


def resolve_flag(value: str | bool, auto: bool) -> bool:
    if isinstance(value, bool):
        return value
    if value not in ("auto", "on", "off"):
        raise ValueError(f"expected 'auto', 'on' or 'off', not {value!r}")
    return auto if value == "auto" else value == "on"


def uses_channels_last(config: TrainerConfig, device: torch.device) -> bool:
    return resolve_flag(config.channels_last, device.type in ("cuda", "cpu"))


def autocast_for(device: torch.device, enabled: bool) -> Autocast:
    if not enabled:
        return nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Move a batch tensor to `device`; to a GPU through pinned memory, so the copy runs
    asynchronously and overlaps the previous step's kernels instead of stalling the host."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def compile_modules(family: Family) -> None:
    """Compile in place, so state_dict keys, checkpoints and the family's own references stay as
    they are. A family may name a subset in `compiled_modules()`: a module that a loss
    differentiates twice (R1, gradient penalty) must stay eager, as aot_autograd has no double
    backward."""
    chosen = family.compiled_modules() if hasattr(family, "compiled_modules") else family.modules()
    for module in chosen.values():
        module.compile()


# --- the loop ------------------------------------------------------------------------------


@dataclass
class FitResult:
    step: int  # the step the run reached
    finished: bool  # True when it reached config.steps; False when a budget or should_stop ended it
    checkpoint: Path | None
    resumed_from: int  # 0 for a fresh run
    metrics: dict = field(default_factory=dict)  # the last logged window
    seconds: float = 0.0
    bf16: bool = False
    channels_last: bool = False
    compiled: bool = False


class _Window:
    """Averages of each metric since the last log line, and the items/s over that window."""

    def __init__(self):
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.items, self.started = 0, now

    def add(self, metrics: Mapping[str, float], items: int) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1
        self.items += items

    def summary(self, now: float) -> dict:
        out = {key: self.sums[key] / self.counts[key] for key in self.sums}
        out["items_per_second"] = self.items / max(now - self.started, 1e-9)
        return out


def _progress_bar(total: int, initial: int):
    # Dagster and CI capture stderr: a progress bar there is noise, so only on a terminal.
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def _state_of(family: Family, source: BatchSource, step: int, config: TrainerConfig, extra: Mapping) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "modules": {name: module.state_dict() for name, module in family.modules().items()},
        "optimizers": {name: opt.state_dict() for name, opt in family.optimizers().items()},
        "schedulers": {name: sched.state_dict() for name, sched in family.schedulers().items()},
        "sampler": source.state_dict(),
        "rng": rng_state(),
        "trainer_config": config.to_dict(),
        "extra": dict(extra),
    }


def _state_for_ranks(state: dict, rank_rngs: list[dict], rank_sources: list[dict]) -> dict:
    """A checkpoint of several ranks also keeps each rank's RNG state and batch source state
    (its "rng" and "sampler" are rank 0's; a streamed split's position differs by rank); one
    process's checkpoint stays as it always was."""
    if len(rank_rngs) > 1:
        state["rank_rng"], state["rank_sampler"] = rank_rngs, rank_sources
    return state


def _restore_rank_source(source: BatchSource, state: Mapping, distributed: Distributed) -> None:
    """Each rank takes back its own batch source state where the checkpoint has one for it
    (else rank 0's, which a source of another world size handles: see its load_state_dict)."""
    saved = state.get("rank_sampler")
    if saved is not None and len(saved) == distributed.world_size:
        source.load_state_dict(saved[distributed.rank])
    else:
        source.load_state_dict(state["sampler"])


def _restore_rank_rng(state: Mapping, distributed: Distributed, seed: int, step: int) -> None:
    """Each rank takes back its own RNG stream (`_restore` gave every rank rank 0's).

    A checkpoint made at another world size has no stream for some ranks, so every rank is
    reseeded from (seed, rank, step): the run goes on correctly, with fresh noise, but is not
    bit-reproducible against an uninterrupted run.
    """
    if distributed.world_size == 1:
        return  # "rng" is the single process's, or rank 0's of a bigger run: either continues
    saved = state.get("rank_rng")
    if saved is not None and len(saved) == distributed.world_size:
        restore_rng_state(saved[distributed.rank])
        return
    if distributed.is_main:
        saved_size = len(saved) if saved is not None else 1
        warnings.warn(f"resuming a {saved_size}-process checkpoint on {distributed.world_size} processes: "
                      "RNG streams are reseeded, so this run is not bit-reproducible")
    seed_everything(rank_seed(seed, distributed.rank) + step)


def _agree_on_checkpoint(latest: Path | None, distributed: Distributed) -> None:
    # Ranks that resume from different steps would deadlock or silently train apart; this
    # happens when run_dir is not one folder every rank sees.
    seen = all_gather_objects(None if latest is None else latest.name, distributed)
    if len(set(seen)) > 1:
        raise RuntimeError(f"the ranks see different newest checkpoints {seen}: run_dir must be shared by all ranks")


def _restore(family: Family, state: Mapping) -> None:
    for name, module in family.modules().items():
        module.load_state_dict(state["modules"][name])
    for name, opt in family.optimizers().items():
        opt.load_state_dict(state["optimizers"][name])
    for name, sched in family.schedulers().items():
        sched.load_state_dict(state["schedulers"][name])
    restore_rng_state(state["rng"])


def fit(
    family: Family,
    config: TrainerConfig,
    run_dir: str | os.PathLike,
    device: torch.device | str = "cpu",
    log: LogFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_extra: Mapping | None = None,
    distributed: Distributed | None = None,
) -> FitResult:
    """Train `family` to `config.steps`, resuming from the newest checkpoint in `run_dir`.

    Determinism: the same seed and data give the same weights whether or not the run was
    killed and resumed, bit-exact on CPU at a fixed `torch.set_num_threads` (the tests check
    this). On CUDA, cuDNN kernel choice may differ between processes unless the caller sets
    `torch.use_deterministic_algorithms(True)`; expect agreement to float rounding only.
    `checkpoint_extra` is plain data stored with every checkpoint (e.g. the family config).

    Data parallel (`distributed` from models.distributed.from_environment, world size > 1):
    `config.batch_size` is the global batch and every rank trains on its own slice of it (in
    memory, every rank draws the same global batch and takes its slice; streamed, each rank
    reads its own share of the row groups: corpora/streaming.py). Gradients are averaged over
    the ranks before every optimizer step, and the ranks agree on when to stop. Only rank 0
    logs and writes checkpoints, which hold every rank's RNG and batch source state; `run_dir`
    must be a folder all ranks see. Buffers the ranks update from their own slices (BatchNorm
    statistics) take rank 0's values at every checkpoint, so the saved model is rank 0's and
    all ranks end identical. With None or a world size of 1 nothing of this happens.
    """
    distributed = distributed or Distributed()
    check_ready(distributed, config.batch_size)
    device = torch.device(device)
    run_dir = Path(run_dir)
    folder = run_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if distributed.is_main:
        remove_stale_temporaries(folder)  # a killed writer's half file is never a checkpoint

    use_bf16 = resolve_flag(config.bf16, bf16_supported(device))
    use_channels_last = uses_channels_last(config, device)
    use_compile = resolve_flag(config.compile, device.type == "cuda")
    autocast = autocast_for(device, use_bf16)
    family.to(device, use_channels_last)
    if use_compile:
        compile_modules(family)

    seed_everything(rank_seed(config.seed, distributed.rank))
    source = family.rows.batches(config.batch_size, config.seed, distributed)
    step = resumed_from = 0
    latest = latest_checkpoint(folder)
    _agree_on_checkpoint(latest, distributed)
    if latest is not None:
        state = load_checkpoint(latest, map_location=device)
        _restore(family, state)
        _restore_rank_source(source, state, distributed)
        _restore_rank_rng(state, distributed, config.seed, int(state["step"]))
        step = resumed_from = int(state["step"])
    modules = list(family.modules().values())
    broadcast_modules(modules, distributed)

    def checkpoint(at: int) -> Path:
        broadcast_float_buffers(modules, distributed)
        rank_rngs = all_gather_objects(rng_state(), distributed)
        rank_sources = all_gather_objects(source.state_dict(), distributed)
        path = folder / checkpoint_name(at)
        if distributed.is_main:
            state = _state_for_ranks(_state_of(family, source, at, config, checkpoint_extra or {}), rank_rngs,
                                     rank_sources)
            save_checkpoint(path, state, keep=config.keep_checkpoints)
        barrier(distributed)  # the others go on only once the checkpoint is on disk
        return path

    started = time.perf_counter()
    window, last_metrics = _Window(), {}
    saved_at = step if latest is not None else -1
    bar = _progress_bar(config.steps, step) if distributed.is_main else None
    gradient_hooks = average_gradients_before_steps(family.optimizers().values(), distributed)
    try:
        while step < config.steps:
            out_of_time = config.max_minutes > 0 and time.perf_counter() - started >= config.max_minutes * 60
            if any_rank(out_of_time or (should_stop is not None and should_stop()), distributed):
                break
            batch = family.make_batch(next(source), device)
            metrics = family.train_step(batch, step, autocast)
            step += 1
            window.add(metrics, config.batch_size)  # the global batch: items/s of the whole run
            if bar is not None:
                bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                now = time.perf_counter()
                last_metrics = window.summary(now)
                # every rank checks its own losses: a rank that raises ends the whole torchrun job
                for key, value in last_metrics.items():
                    if not math.isfinite(value):
                        raise FloatingPointError(f"step {step}: {key} is {value}")
                if log is not None and distributed.is_main:
                    log(step, last_metrics)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.3g}" for k, v in last_metrics.items()})
                window.reset(now)
            if step % config.checkpoint_every == 0:
                checkpoint(step)
                saved_at = step
    finally:
        for hook in gradient_hooks:
            hook.remove()
        source.close()
        if bar is not None:
            bar.close()
    # The end of a run, and a run a budget stopped, always leave a checkpoint to resume from.
    path = checkpoint(step) if saved_at != step else latest_checkpoint(folder)
    return FitResult(
        step=step,
        finished=step >= config.steps,
        checkpoint=path,
        resumed_from=resumed_from,
        metrics=last_metrics,
        seconds=time.perf_counter() - started,
        bf16=use_bf16,
        channels_last=use_channels_last,
        compiled=use_compile,
    )
