#!/usr/bin/env bash
# The GPU benchmark (bench/gpu.py) on a fresh GPU machine that has this repository and its .venv:
# every family for a fixed number of steps in fp32, bf16 and bf16 + torch.compile, with
# throughput and peak memory, in under 10 minutes on one H100.
#
#   bench/gpu.sh                          # defaults of bench/gpu.py; the table also goes to $OUT/gpu-bench.md
#   bench/gpu.sh --steps 100 --families image-gan,video-rnn
#
# Ingesting the default corpora (only when their manifests are missing) counts against the 10
# minutes: the benchmark's own budget is what is left. Arguments go to bench/gpu.py after
# --data-root and --budget-seconds, so they override both.
set -euo pipefail

BENCH_TOTAL_SECONDS=${BENCH_TOTAL_SECONDS:-600}  # the whole script, ingest included
STARTUP_SECONDS=45                   # python and CUDA start-up, data loading, the last row's overrun
MIN_BENCH_SECONDS=60                 # less than this left after ingest: the table would say nothing
KILL_GRACE_SECONDS=10                # after timeout's SIGTERM, before SIGKILL

cd "$(dirname "$0")/.."
python=.venv/bin/python
data_root=${ATELIER_DATA_ROOT:-data}
report_dir=${OUT:-.}

if ! command -v nvidia-smi >/dev/null; then
    echo "nvidia-smi not found: this benchmark needs a machine with an NVIDIA GPU and its driver" >&2
    exit 1
fi
nvidia-smi

"$python" - <<'PY'
import sys

import torch

print(f"torch {torch.__version__} (CUDA build: {torch.version.cuda}); torch.cuda.is_available() = {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit(f"CUDA is not available to this torch: the project pins the CPU wheel. Install the CUDA build of torch "
             f"{torch.__version__.split('+')[0]} into .venv (https://pytorch.org/get-started/locally/), then run this again.")
PY

# the corpora the families train on (models.family.families()), each once
corpora=$("$python" -c 'from models.family import families
print(" ".join(sorted({record.corpus for record in families().values()})))')
missing=()
for corpus in $corpora; do
    [[ -f "$data_root/shards/$corpus/manifest.json" ]] || missing+=("$corpus")
done
if ((${#missing[@]})); then
    echo "no shards for: ${missing[*]}; ingesting the default corpora into $data_root"
    ATELIER_DATA_ROOT=$data_root .venv/bin/atelier run --job ingest
fi

left=$((BENCH_TOTAL_SECONDS - SECONDS))
budget=$((left - STARTUP_SECONDS))
if ((budget < MIN_BENCH_SECONDS)); then
    echo "only ${left} s of BENCH_TOTAL_SECONDS=${BENCH_TOTAL_SECONDS} are left for the benchmark, which needs" \
         "$((MIN_BENCH_SECONDS + STARTUP_SECONDS)) s; a rerun skips the ingest" >&2
    exit 1
fi

mkdir -p "$report_dir"
status=0
timeout --kill-after="$KILL_GRACE_SECONDS" "$((left - KILL_GRACE_SECONDS))" \
    "$python" -m bench.gpu --data-root "$data_root" --budget-seconds "$budget" "$@" \
    | tee "$report_dir/gpu-bench.md" || status=$?
if ((status == 124 || status == 137)); then
    echo "bench/gpu.py ran past the ${BENCH_TOTAL_SECONDS} s limit and was stopped; the rows above finished" >&2
fi
exit "$status"
