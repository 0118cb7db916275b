"""Where an ingest's main process holds memory: the traced peak of each phase.

    .venv/bin/python -m bench.ingest_phases [--kind midi] [--files 40000] [--scratch /tmp/atelier-phases]

Writes a synthetic corpus with `bench/scale.py`'s writers (kept in the scratch folder for the
next run), ingests it afresh in this process under `tracemalloc` (Python objects and numpy
arrays; Arrow's memory pool is not traced) and prints, for each phase of `corpora.ingest`, the
traced MB before it, its peak and after it, then the process's peak RSS. Phases run more than
once (one table each) print a row each. docs/corpora-at-scale.md has the numbers.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tracemalloc
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import corpora.ingest as ingest_module  # noqa: E402
from bench.scale import WRITERS, modality_and_config  # noqa: E402
from corpora.ingest import IngestSettings, ingest  # noqa: E402

PHASES = ("scan_with_stats", "remember_hashes", "_sort_files", "_signatures", "plan_split", "_write_table")


def traced(name: str, function, rows: list):
    def phase(*args, **kwargs):
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = function(*args, **kwargs)
        after, peak = tracemalloc.get_traced_memory()
        rows.append((name, before, peak, after))
        return result
    return phase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=sorted(WRITERS), default="midi")
    parser.add_argument("--files", type=int, default=40000)
    parser.add_argument("--scratch", default="/tmp/atelier-phases")
    args = parser.parse_args()
    raw, out = Path(args.scratch) / f"{args.kind}-{args.files}", Path(args.scratch) / "out"
    if not raw.is_dir():
        WRITERS[args.kind](raw, 0, args.files)
    shutil.rmtree(out, ignore_errors=True)
    rows: list[tuple[str, int, int, int]] = []
    for name in PHASES:
        setattr(ingest_module, name, traced(name, getattr(ingest_module, name), rows))
    modality, config = modality_and_config(args.kind)
    tracemalloc.start()
    ingest(modality, config, raw, out, IngestSettings(workers=2), progress=lambda message: None)
    tracemalloc.stop()

    print(f"\n{args.files} {args.kind} files, traced MB of the main process\n")
    print("| phase | before | peak | after |")
    print("|---|---|---|---|")
    for name, before, peak, after in rows:
        print(f"| {name} | {before / 2**20:.1f} | {peak / 2**20:.1f} | {after / 2**20:.1f} |")
    print(f"\npeak RSS of the main process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
