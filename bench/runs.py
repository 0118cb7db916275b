"""What the families' quality rows share (bench/train.py --quality): config overrides from the
command line, and training through the shared trainer with the process CPU time it took, the
budget the profiles are sized in (docs/performance.md: one thread, so CPU time is what the run
would take on one free core, whatever else shares the machine)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from models.trainer import FitResult, fit


def parse_overrides(items: list[str]) -> dict:
    """FIELD=JSON items (`--set 'betas=[0.5, 0.999]' steps=900`) as config overrides."""
    return {key: json.loads(value) for key, value in (item.split("=", 1) for item in items)}


def row_name(profile: str, seed: int, overrides: dict) -> str:
    return f"{profile} seed {seed}" + "".join(f" {key}={value}" for key, value in overrides.items())


@dataclass
class TimedRun:
    result: FitResult
    cpu_seconds: float

    def describe(self, name: str) -> str:
        steps = max(self.result.step, 1)
        return (f"{name}: {self.result.step} steps in {self.result.seconds:.0f} s, {self.cpu_seconds:.0f} CPU s "
                f"({self.cpu_seconds / steps:.2f} CPU s a step)")


def timed_fit(family, trainer_config, run_dir, **fit_options) -> TimedRun:
    started = time.process_time()
    result = fit(family, trainer_config, run_dir, **fit_options)
    return TimedRun(result, time.process_time() - started)
