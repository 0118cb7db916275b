"""Training throughput and peak memory of every family on one GPU, in fp32, bf16 and bf16 + compile.

    .venv/bin/python -m bench.gpu                     # every family x 3 variants, gpu profiles, CUDA
    .venv/bin/python -m bench.gpu --device cpu --steps 2 --profile demo --variants fp32 --threads 1   # smoke test
    bench/gpu.sh                                      # the same on a fresh GPU machine, under 10 minutes

Each family of `models.family.families()` gets a row per variant, named by its registered name
("image-gan"). A row builds the family from its corpus's shard manifest with the family's
`training.benchmark_family(manifest, profile)`, as its `run_training` does (the profile's sizes
and batch, `steps` replaced), and trains it with `models.trainer.fit`, exactly the loop the
training assets run: pinned-memory batches, bf16 autocast, channels_last and torch.compile as
the variant sets them. Evaluation is not part of it.

- items/s is the median of the trainer's log windows after the first, which holds the warm-up
  (cuDNN's first calls, torch.compile's compilation); ms/step follows from it and the batch.
  Every family calls `.item()` in each step, so a window's clock covers finished GPU work.
- wall s is the whole row: building the family, then `fit` with its compilation and final checkpoint.
- bf16-compile compiles what `fit` compiles: each of the family's modules' `forward` (see
  models.trainer.compile_modules). A family that trains through other methods gains nothing,
  and a row whose compilation fails reports the error and the bench goes on.
- peak memory is `torch.cuda.max_memory_allocated` of the row on CUDA; on CPU it is the
  process's max RSS so far (it only grows, so a row shows the largest of itself and the rows
  before it).
- "fp32" keeps torch's defaults: cuDNN convolutions may use TF32 tensor cores, matmuls do not
  (the header prints both flags). The trainer does not change them, so neither does this bench.
- a family with several models (the music VAE: chorale and melody) benchmarks the one its
  `benchmark_family` builds (the chorale model, the larger).

Time: every row gets an equal share of what is left of --budget-seconds when it starts, so
fast rows leave time to slow ones and no row can eat the rest; a row over its share stops
through `fit`'s `should_stop` and reports the steps it reached. The first step (compilation)
cannot be interrupted: gpu.sh's `timeout` is the backstop.

Default steps, an estimate and not a measurement: one training step of the gpu profiles costs
about 0.22 TFLOP (image), 0.06 (music), 3.8 (painting) and 21 (video), in 460, 3300, 4400 and
6400 aten ops (counted on CPU with torch.utils.flop_counter's formulas at batch 4, scaled to
the profiles' batches). At ~100 TFLOP/s in fp32/TF32 and ~200 in bf16 on an H100, plus ~10 us
of host time per op, a step of all four families takes ~0.4 s in fp32 and ~0.3 s in bf16, so
3 variants x 200 steps are ~200 s of training; with ~120 s of compilation, ~60 s of building
and checkpointing and ~15 s of start-up the default run takes ~6.5 minutes. --budget-seconds
caps the rows at 8 minutes (plus, at worst, a first step that overruns its row's share).
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import platform
import resource
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from models.family import FamilyRecord, families
from models.trainer import fit
from resources.storage import default_data_root

DEFAULT_STEPS = 200
DEFAULT_BUDGET_SECONDS = 480  # the 10 minutes, less start-up, ingest checks and a margin
LOG_WINDOWS = 10  # log windows per row; the first holds the warm-up and is left out of the median
GIB = 2**30
RSS_UNIT_BYTES = 1024  # Linux reports ru_maxrss in KiB
ERROR_CHARS = 160  # a failed row's note keeps the start of the error; the traceback goes to stderr

# fp32 first: the other rows' speed-up is against it, and the table is printed as rows finish
VARIANTS = {
    "fp32": dict(bf16="off", channels_last="off", compile="off"),
    "bf16": dict(bf16="on", channels_last="auto", compile="off"),
    "bf16-compile": dict(bf16="on", channels_last="auto", compile="on"),
}
COLUMNS = ("family", "variant", "settings", "batch", "steps", "items/s", "ms/step", "{memory}", "wall s",
           "speed-up vs fp32", "note")

# (steps) -> (family, its model config): a fresh family on data loaded once per family
FamilyMaker = Callable[[int], tuple]


# --- building families as their run_training does -------------------------------------------


def maker_of(record: FamilyRecord, manifest: Path, profile: str) -> FamilyMaker:
    """The family's `training.benchmark_family`: it reads the data once and builds like `run_training`."""
    return importlib.import_module(f"{record.package}.training").benchmark_family(manifest, profile)


def failing_maker(error: Exception) -> FamilyMaker:
    def make(steps: int):
        raise error

    return make


def manifest_of(data_root: Path, record: FamilyRecord) -> Path:
    return data_root / "shards" / record.corpus / "manifest.json"


# --- one row ---------------------------------------------------------------------------------


@dataclass
class Row:
    family: str
    variant: str
    batch_size: int = 0
    steps: int = 0
    items_per_second: float | None = None
    peak_bytes: int = 0
    wall_seconds: float = 0.0
    settings: str = ""
    note: str = ""


class Budget:
    """Splits what is left of the total time evenly over the rows still to run."""

    def __init__(self, seconds: float, rows: int):
        self.ends_at, self.rows_left = time.monotonic() + seconds, rows

    def next_row_deadline(self) -> tuple[float, float]:
        """(deadline, share in seconds) for the row about to start."""
        share = max(0.0, self.ends_at - time.monotonic()) / max(self.rows_left, 1)
        self.rows_left -= 1
        return time.monotonic() + share, share


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT_BYTES


def settings_of(result) -> str:
    names = [name for name, on in (("bf16", result.bf16), ("channels_last", result.channels_last),
                                   ("compiled", result.compiled)) if on]
    return "+".join(names) or "fp32"


def steady_rate(rates: list[float]) -> tuple[float | None, str]:
    """Median items/s without the first (warm-up) window, and a note when that left nothing."""
    if len(rates) > 1:
        return statistics.median(rates[1:]), ""
    if rates:
        return rates[0], "one window: includes warm-up"
    return None, "no full log window"


def train_row(make: FamilyMaker, row: Row, steps: int, device: torch.device, deadline: float, share: float) -> None:
    family, config = make(steps)
    trainer_config = config.trainer_config(steps=steps, checkpoint_every=steps, log_every=max(1, steps // LOG_WINDOWS),
                                           **VARIANTS[row.variant])
    row.batch_size = trainer_config.batch_size
    rates: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as run_dir:
        result = fit(family, trainer_config, run_dir, device=device,
                     log=lambda step, metrics: rates.append(metrics["items_per_second"]),
                     should_stop=lambda: time.monotonic() >= deadline)
    row.steps, row.settings = result.step, settings_of(result)
    row.items_per_second, note = steady_rate(rates)
    stopped = "" if result.finished else f"stopped by its {share:.0f} s share of the budget"
    row.note = "; ".join(part for part in (stopped, note) if part)


def release_memory(device: torch.device, compiled: bool) -> None:
    gc.collect()
    if compiled:
        # new module instances in the next row would otherwise pile up recompilations (and
        # their code) in dynamo's cache
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_row(make: FamilyMaker, family: str, variant: str, args, budget: Budget) -> Row:
    row = Row(family, variant)
    deadline, share = budget.next_row_deadline()
    reset_peak_memory(args.device)
    started = time.perf_counter()
    try:
        train_row(make, row, args.steps, args.device, deadline, share)
    except Exception as error:  # one family's OOM or compile failure must not cost the other rows
        traceback.print_exc()
        first_line = next(iter(str(error).splitlines()), "")
        row.note = f"failed: {type(error).__name__}: {first_line}"[:ERROR_CHARS]
    finally:
        row.wall_seconds = time.perf_counter() - started
        row.peak_bytes = peak_memory_bytes(args.device)  # an OOM's peak says how far it got
        release_memory(args.device, VARIANTS[variant]["compile"] == "on")
    return row


# --- the report ------------------------------------------------------------------------------


def load_average() -> str:
    try:
        return " ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_line(device: torch.device) -> str:
    if device.type != "cuda":
        return f"device: {cpu_name()} ({os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads)"
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return (f"device: {props.name} (cuda:{index}, {props.total_memory / GIB:.1f} GiB, "
            f"compute capability {props.major}.{props.minor}); CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}; fp32 rows may use TF32: convolutions "
            f"{torch.backends.cudnn.allow_tf32}, matmuls {torch.backends.cuda.matmul.allow_tf32}")


def memory_column(device: torch.device) -> str:
    return "peak CUDA GiB" if device.type == "cuda" else "process max RSS GiB"


def table_header(device: torch.device) -> str:
    names = [column.format(memory=memory_column(device)) for column in COLUMNS]
    return "\n".join(["| " + " | ".join(names) + " |", "|" + "---|" * len(names)])


def number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table_line(row: Row, fp32_rate: float | None) -> str:
    rate = row.items_per_second
    ms_per_step = 1000 * row.batch_size / rate if rate else None
    speed_up = rate / fp32_rate if rate and fp32_rate else None
    cells = [row.family, row.variant, row.settings or "-", str(row.batch_size or "-"), str(row.steps),
             number(rate, 1), number(ms_per_step, 1), number(row.peak_bytes / GIB, 2), f"{row.wall_seconds:.1f}",
             number(speed_up, 2), row.note]
    return "| " + " | ".join(cells) + " |"


def print_preamble(args, rows: int) -> None:
    print(f"load average {load_average()}", flush=True)
    print(f"torch {torch.__version__}; {device_line(args.device)}")
    print(f"profile {args.profile}, {args.steps} steps a row, a log window every {max(1, args.steps // LOG_WINDOWS)} "
          f"steps (items/s: median of the windows after the first); budget {args.budget_seconds:.0f} s over {rows} rows")
    print()
    print(table_header(args.device), flush=True)


# --- command line ----------------------------------------------------------------------------


def comma_list(choices: tuple[str, ...] | list[str] | dict) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        chosen = [name.strip() for name in text.split(",") if name.strip()]
        unknown = set(chosen) - set(choices)
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return [name for name in choices if name in chosen]  # the canonical order: fp32 first, families as found

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps a row")
    names = list(families())
    parser.add_argument("--families", type=comma_list(names), default=names,
                        help=f"comma-separated registered names ({', '.join(names)})")
    parser.add_argument("--variants", type=comma_list(VARIANTS), default=list(VARIANTS), help="comma-separated")
    parser.add_argument("--device", type=torch.device, default=torch.device("cuda"))
    parser.add_argument("--profile", default="gpu", choices=["demo", "cpu-long", "gpu"])
    parser.add_argument("--data-root", type=Path, default=Path(default_data_root()),
                        help="holds shards/<corpus>/manifest.json (default: $ATELIER_DATA_ROOT or data/)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--budget-seconds", type=float, default=DEFAULT_BUDGET_SECONDS,
                        help="all rows together; each row gets an equal share of what is left when it starts")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"CUDA is not available to torch {torch.__version__} (a CPU build?); use --device cpu")
    records = families()
    missing = [str(manifest_of(args.data_root, records[name])) for name in args.families
               if not manifest_of(args.data_root, records[name]).exists()]
    if missing:
        parser.error(f"no shards at {', '.join(missing)}: run `.venv/bin/atelier run --job ingest` first")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # gpu.sh's timeout sends SIGTERM: exit through Python so the rows' temporary run folders
    # (checkpoints of up to a GB) are removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = Budget(args.budget_seconds, len(args.families) * len(args.variants))
    print_preamble(args, budget.rows_left)
    records = families()
    for name in args.families:
        manifest = manifest_of(args.data_root, records[name])
        print(f"loading {name} from {manifest}", file=sys.stderr, flush=True)
        try:
            make = maker_of(records[name], manifest, args.profile)
        except Exception as error:  # no benchmark_family, or data it cannot read: its rows say so, the rest run
            traceback.print_exc()
            make = failing_maker(error)
        fp32_rate = None
        for variant in args.variants:
            row = run_row(make, name, variant, args, budget)
            if variant == "fp32":
                fp32_rate = row.items_per_second
            print(table_line(row, fp32_rate), flush=True)
        del make  # the family's data: only one family's is held at a time
        gc.collect()


if __name__ == "__main__":
    main()
