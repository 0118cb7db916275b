"""Video RNN rows of bench/train.py: clips/s (trainer vs plain loop) and the held-out tables.

    .venv/bin/python -m bench.train --family video [--quality [--profile cpu-long --profile convlstm-cpu-long]]
    .venv/bin/python -m bench.video --profile demo --set architecture='"convlstm"'   # one run

Quality: each profile asked for (default: the demo, a ConvLSTM; cpu-long is PredRNN-V2) to its
end; each run is models.video_rnn.metrics.evaluate on the held-out clips of
each kind of source (the top folder of its path: moving_digits, real), the copy-last-frame
baseline beside the model at every horizon (MSE, SSIM, PSNR as OpenSTL computes them) and the
champion rule's score_vs_copy_last.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench import throughput
from bench.runs import parse_overrides, row_name, timed_fit
from models.video_rnn.config import VideoRnnConfig
from models.video_rnn.metrics import evaluate, evaluate_by_kind, format_table
from models.video_rnn.sampling import predict
from models.video_rnn.training import VideoRnnFamily, load_clips

DEFAULT_MANIFEST = Path("data/shards/video/manifest.json")


def throughput_table(manifest: Path, steps: int, repeats: int) -> str:
    clips = load_clips(manifest)["train"]
    config = VideoRnnConfig.profile("demo")
    return throughput.throughput_table("video RNN (demo profile, 10 -> 10 frames)", "clips",
                                       lambda: VideoRnnFamily(config, clips), config, steps, repeats)


def quality_run(name: str, config: VideoRnnConfig, clips: dict) -> str:
    """Train `config` through the shared trainer and report it on each kind of held-out clip."""
    family = VideoRnnFamily(config, clips["train"])
    with tempfile.TemporaryDirectory() as run_dir:
        run = timed_fit(family, config.trainer_config(), run_dir)
    model = family.model.cpu().eval()
    started = time.perf_counter()
    predict(model, clips["heldout"][0][: config.context_frames], mode="sample", seed=0)
    sampling = time.perf_counter() - started
    out = [f"### {run.describe(name)}; sampling one {config.horizon}-frame continuation pixel by pixel: {sampling:.1f} s"]
    out += ["#### all held-out clips", format_table(evaluate(model, clips["heldout"])), ""]
    for kind, report in evaluate_by_kind(model, clips["heldout"], clips["heldout_sources"]).items():
        out += [f"#### held-out {kind}", format_table(report), ""]
    return "\n".join(out)


def quality_table(manifest: Path, profiles=("demo",), seeds=(0,), overrides: dict | None = None) -> str:
    clips = load_clips(manifest)
    return "\n".join(quality_run(row_name(profile, seed, overrides or {}),
                                 VideoRnnConfig.profile(profile, seed=seed, **(overrides or {})), clips)
                     for profile in profiles for seed in seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description="One quality run of the video model (bench/video.py).")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--profile", default="demo", choices=sorted(VideoRnnConfig.PROFILES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON", help="config overrides")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(quality_table(args.manifest, [args.profile], [args.seed], parse_overrides(args.set)), flush=True)


if __name__ == "__main__":
    main()
