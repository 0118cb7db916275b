"""The README's main job end to end: from an empty data folder, then a second (no-op) run.

    .venv/bin/python bench/e2e.py [--data-root /tmp/atelier-e2e] [--keep]

Runs `atelier run` twice in subprocesses against a fresh data root (set-up is assumed done)
and prints wall time and peak memory (the largest resident set of any process the run
started, from getrusage of the children). Targets on 2 cores: the first run within 14
minutes, the no-op rerun within 60 seconds. One run each: time several invocations and
quote the median on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS_S = {"first run (empty data folder)": 14 * 60, "second run (nothing changed)": 60}


def timed_run(data_root: Path, log: Path) -> tuple[float, float, int]:
    """(seconds, peak resident MiB of any child so far, exit code) of one `atelier run`."""
    env = {**os.environ, "ATELIER_DATA_ROOT": str(data_root), "DAGSTER_HOME": str(data_root / "dagster_home")}
    atelier = Path(sys.executable).parent / "atelier"
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run([str(atelier), "run"], env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux reports KiB
    return seconds, peak_kib / 1024, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, help="an empty or missing folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the data root afterwards")
    args = parser.parse_args()
    root = args.data_root or Path(tempfile.mkdtemp(prefix="atelier-e2e-"))
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty: the first run must start from nothing")
    root.mkdir(parents=True, exist_ok=True)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; data root {root}", flush=True)
    rows = []
    for index, (name, target) in enumerate(TARGETS_S.items()):
        seconds, peak_mib, code = timed_run(root, root.parent / f"{root.name}-run{index + 1}.log")
        rows.append(f"| {name} | {seconds:.0f} | {target} | {'yes' if seconds <= target and code == 0 else 'NO'} "
                    f"| {peak_mib:.0f} | {code} |")
        print(f"{name}: {seconds:.0f} s, exit {code}", flush=True)
    print("| run | seconds | target s | within target | peak RSS MiB (any process so far) | exit |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    if not args.keep and args.data_root is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
