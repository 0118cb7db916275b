"""Video RNN rows of bench/train.py: clips/s (trainer vs plain loop) and the held-out table.

    .venv/bin/python -m bench.train --family video [--quality --minutes 20]

Quality: the demo profile to its end, and with --minutes a cpu-long run stopped by that
budget; each row is models.video_rnn.metrics.evaluate on the held-out clips, the copy-last-frame
baseline beside the model at every horizon (MSE, SSIM, PSNR as OpenSTL computes them) and the
champion rule's score_vs_copy_last.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench import throughput
from models.trainer import fit
from models.video_rnn.config import VideoRnnConfig
from models.video_rnn.metrics import evaluate, format_table
from models.video_rnn.sampling import predict
from models.video_rnn.training import VideoRnnFamily, load_clips

DEFAULT_MANIFEST = Path("data/shards/video/manifest.json")


def throughput_table(manifest: Path, steps: int, repeats: int) -> str:
    clips = load_clips(manifest)["train"]
    config = VideoRnnConfig.profile("demo")
    return throughput.throughput_table("video RNN (demo profile, 10 -> 10 frames)", "clips",
                                       lambda: VideoRnnFamily(config, clips), config, steps, repeats)


def quality_table(manifest: Path, minutes: float | None) -> str:
    clips = load_clips(manifest)
    runs = {"demo": (VideoRnnConfig.profile("demo"), {})}
    if minutes:
        runs[f"cpu-long {minutes:g} min"] = (VideoRnnConfig.profile("cpu-long"), {"max_minutes": minutes})
    out = []
    for name, (config, budget) in runs.items():
        family = VideoRnnFamily(config, clips["train"])
        with tempfile.TemporaryDirectory() as run_dir:
            result = fit(family, config.trainer_config(**budget), run_dir)
        model = family.model.cpu().eval()
        report = evaluate(model, clips["heldout"])
        started = time.perf_counter()
        predict(model, clips["heldout"][0][: config.context_frames], mode="sample", seed=0)
        sampling = time.perf_counter() - started
        out += [f"### {name}: {result.step} steps in {result.seconds:.0f} s; "
                f"sampling one {config.horizon}-frame continuation pixel by pixel: {sampling:.1f} s",
                format_table(report), ""]
    return "\n".join(out)
