"""One entry point trains every family: a config file and a shard manifest in, a bundle out.

    python -m models.train --family music-vae --config run.json \\
        --manifest data/shards/midi/manifest.json --run-dir runs/music

The config file is a `TrainingRequest` as JSON. The run resumes from the newest checkpoint in
`--run-dir`, evaluates on the held-out split, writes `bundle.pt` and reports a `TrainingOutcome`.

Where the reports go:
- launched by Dagster (`PipesSubprocessClient`, or `PipesK8sClient` in a pod), through Dagster
  Pipes: progress as log lines, each metric window and the outcome as custom messages;
- by hand, as JSON lines on stdout, and the outcome also as `outcome.json` in the run folder.

Under `torchrun --nproc-per-node N` every rank trains its slice of each batch
(models.distributed); rank 0 alone reports, evaluates and writes the bundle.

Dagster-free: `dagster_pipes` is a small package with no dependencies of its own.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from models import distributed as dist_env
from models.batches import LoaderConfig
from models.family import families, family

OUTCOME_FILE = "outcome.json"
PIPES_CONTEXT_ENV = "DAGSTER_PIPES_CONTEXT"  # set by every Dagster Pipes client


@dataclass
class TrainingRequest:
    """Everything a run needs besides its data (the manifest) and its folder (the run dir)."""

    family: str  # a family's registered name (models.family.families())
    model_config: dict  # the family config's to_dict(), seed included; music-vae: {kind: config dict}
    options: dict = field(default_factory=dict)  # family-specific: eval_samples, classifier weights, ...
    init_from: str = ""  # a bundle of the same family whose weights the run starts from
    trainer: dict = field(default_factory=dict)  # TrainerConfig overrides: max_minutes, compile, bf16, ...
    loader: dict = field(default_factory=dict)  # LoaderConfig overrides: stream, shuffle_window_rows, eval_rows, ...
    device: str = "auto"  # "auto": CUDA when present
    threads: int = 2  # torch intra-op threads per process

    @classmethod
    def from_json(cls, text: str) -> "TrainingRequest":
        values = json.loads(text)
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training request fields: {sorted(unknown)}")
        request = cls(**values)
        if request.family not in families():
            raise ValueError(f"family must be one of {tuple(families())}, not {request.family!r}")
        return request

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def loader_config(self) -> LoaderConfig:
        """How the run reads its split: the defaults with this request's overrides."""
        return LoaderConfig(**self.loader)


@dataclass
class TrainingOutcome:
    """What a run reports back; plain JSON values only."""

    bundle: str  # path of the exported bundle.pt
    checkpoint: str  # the newest checkpoint, to resume or inspect
    step: int
    resumed_from: int
    train_seconds: float
    score: float  # the family's champion metric
    summary: dict  # name -> number: logged to MLflow and shown in Dagster
    report_markdown: str  # the evaluation table
    details: dict = field(default_factory=dict)  # family-specific JSON values for the asset's metadata

    def __post_init__(self):
        # numpy scalars and arrays from the metrics would not survive JSON (outcome.json, Pipes)
        self.summary = {str(name): float(value) for name, value in self.summary.items()}
        self.details = json.loads(json.dumps(self.details, default=lambda value: value.tolist()))


class Reporter:
    """Where a run's progress goes. The base class prints JSON lines (a run started by hand)."""

    progress = ""  # "step 450 of 1500, about 2 min left": set by RunContext.fit before each metrics window

    def log(self, message: str) -> None:
        print(json.dumps({"log": message}), flush=True)

    def metrics(self, step: int, values: dict) -> None:
        print(json.dumps({"step": step, "metrics": values}), flush=True)

    def outcome(self, outcome: TrainingOutcome) -> None:
        print(json.dumps({"outcome": asdict(outcome)}), flush=True)


class PipesReporter(Reporter):
    """Reports through Dagster Pipes: the orchestrating asset sees logs live and the metric
    windows and outcome as custom messages once the process ends."""

    def __init__(self, pipes):
        self.pipes = pipes

    def log(self, message: str) -> None:
        self.pipes.log.info(message)

    def metrics(self, step: int, values: dict) -> None:
        where = self.progress or f"step {step}"
        self.pipes.log.info(f"{where}: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
        self.pipes.report_custom_message({"metrics": {"step": step, "values": values}})

    def outcome(self, outcome: TrainingOutcome) -> None:
        self.pipes.report_custom_message({"outcome": asdict(outcome)})


class SilentReporter(Reporter):
    """For ranks other than 0: they train but say nothing."""

    def log(self, message: str) -> None:
        pass

    def metrics(self, step: int, values: dict) -> None:
        pass

    def outcome(self, outcome: TrainingOutcome) -> None:
        pass


@dataclass
class RunContext:
    """What a family's `run_training` gets besides the request."""

    manifest: Path
    run_dir: Path
    device: torch.device
    distributed: dist_env.Distributed
    report: Reporter

    def should_stop(self) -> Callable[[], bool]:
        """True once the process that started this one is gone: an orphaned trainer would
        otherwise train on beside the rerun that resumes its run folder. It stops at the next
        step and leaves a checkpoint. (The time budget is the trainer's own max_minutes.)"""
        parent = os.getppid()
        return lambda: os.getppid() != parent

    def fit(self, family, config, request: TrainingRequest, run_dir: Path | None = None,
            log: Callable[[int, dict], None] | None = None, extra: dict | None = None):
        """models.trainer.fit with this run's device, ranks, budget and reporter; `config` is the
        family's config, stored with every checkpoint."""
        from models.trainer import fit

        trainer_config = config.trainer_config(**request.trainer)
        report, clock = log or self.report.metrics, _Progress(trainer_config.steps)

        def report_with_progress(step: int, values: dict) -> None:
            self.report.progress = clock.describe(step)
            report(step, values)

        return fit(family, trainer_config, run_dir or self.run_dir, device=self.device, log=report_with_progress,
                   should_stop=self.should_stop(), distributed=self.distributed,
                   checkpoint_extra={"config": config.to_dict(), **(extra or {})})


class _Progress:
    """"step 450 of 1500, about 2 min left", the time left judged by the pace since the first window."""

    def __init__(self, total: int):
        self.total, self.first, self.started = total, None, 0.0

    def describe(self, step: int) -> str:
        text = f"step {step} of {self.total}"
        if self.first is None:
            self.first, self.started = step, time.monotonic()
        elif step > self.first:
            left = (time.monotonic() - self.started) / (step - self.first) * (self.total - step)
            text += f", about {left:.0f} s left" if left < 90 else f", about {left / 60:.0f} min left"
        return text


def resolve_device(requested: str, distributed: dist_env.Distributed) -> torch.device:
    """cuda:LOCAL_RANK for a rank of a multi-GPU run; else what was asked ("auto": CUDA when present)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if distributed.world_size > 1:
        return dist_env.device_for(distributed, torch.device(requested).type)
    return torch.device(requested)


def train(request: TrainingRequest, manifest: Path, run_dir: Path, reporter: Reporter) -> TrainingOutcome | None:
    """Run one training request in this process (one rank of it under torchrun). Returns the
    outcome on rank 0 (also written to run_dir/outcome.json), None on other ranks."""
    from common.atomic import atomic_write_text

    torch.set_num_threads(request.threads)
    device_type = "cuda" if request.device.startswith("cuda") or (request.device == "auto" and torch.cuda.is_available()) else "cpu"
    distributed = dist_env.from_environment(device_type)
    try:
        run = RunContext(manifest=Path(manifest), run_dir=Path(run_dir), device=resolve_device(request.device, distributed),
                         distributed=distributed, report=reporter if distributed.is_main else SilentReporter())
        run.run_dir.mkdir(parents=True, exist_ok=True)
        if distributed.world_size > 1:
            run.report.log(f"rank 0 of {distributed.world_size}, device {run.device}")
        outcome = family(request.family).run_training()(request, run)
    finally:
        dist_env.shutdown(distributed)
    if outcome is None:
        return None
    atomic_write_text(run.run_dir / OUTCOME_FILE, json.dumps(asdict(outcome), indent=2))
    reporter.outcome(outcome)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=tuple(families()), help="overrides the config file's family")
    parser.add_argument("--config", required=True, type=Path, help="a TrainingRequest as JSON")
    parser.add_argument("--manifest", required=True, type=Path, help="the shard manifest to train on")
    parser.add_argument("--run-dir", required=True, type=Path, help="checkpoints, bundle.pt, outcome.json")
    args = parser.parse_args(argv)
    request = TrainingRequest.from_json(args.config.read_text())
    if args.family:
        request.family = args.family
    if PIPES_CONTEXT_ENV in os.environ and os.environ.get("RANK", "0") == "0":
        from dagster_pipes import open_dagster_pipes

        with open_dagster_pipes() as pipes:
            train(request, args.manifest, args.run_dir, PipesReporter(pipes))
    else:
        train(request, args.manifest, args.run_dir, Reporter())
    return 0


if __name__ == "__main__":
    sys.exit(main())
