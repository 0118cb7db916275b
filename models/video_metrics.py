"""Held-out metrics and gallery helpers for the video forecaster.

Per future step, on held-out clips (the split is by source file, so no held-out clip shares a
file with training), as PredRNN and OpenSTL report Moving MNIST:

- **MSE**: the sum of squared errors over one frame's pixels *and channels*, pixels in [0, 1],
  averaged over clips (so a 64x64 one-channel frame's MSE is 4096 times its per-pixel mean).
  It is measured on the model's channels: for a one-channel model the truth is converted to
  luminance first, exactly as the model's input is.
- **SSIM** (skimage.metrics.structural_similarity, data_range=1, 7x7 window, channel_axis for
  RGB) and **PSNR** (peak_signal_noise_ratio, data_range=1) per frame, averaged over clips.
  PSNR of a perfect frame is infinite; it is capped at PSNR_CAP_DB so that means stay finite.
- **bits/dim** of the PixelCNN head on the future frames (models.video_rnn.bits_per_dim).
- the **copy-last-frame baseline** (every future frame = the last context frame) in the same
  table, and the horizons where the model's MSE is lower than the baseline's.

The model's numbers are its "mean" predictions (the forecaster fed its own means), the mode
that minimises squared error; "sample" mode draws sharp frames whose squared error is higher
by construction, so it is not what these columns measure.

Gallery helpers: `side_by_side` (context | truth | prediction panels), `write_gif` (PIL) and
`error_plot_png` (matplotlib's Agg canvas, no pyplot state). MP4 is corpora.video.write_video.
"""
from __future__ import annotations

import io
import math
import os
from typing import IO

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from models.video_rnn import VideoRnn, bits_per_dim, match_channels, predict, prepare_clips

PSNR_CAP_DB = 100.0  # identical frames give infinite PSNR; a cap keeps the means finite
GAP_PIXELS = 2  # between the side-by-side panels
GAP_CONTEXT = (96, 96, 96)  # gap colour while the context plays
GAP_FUTURE = (200, 40, 40)  # and while the future plays, so a viewer sees where prediction starts
METRICS = ("mse", "ssim", "psnr")
PLOT_SIZE_INCHES, PLOT_DPI = (6.0, 3.2), 100


# --- per-frame scores ------------------------------------------------------------------------


def frame_scores(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """MSE (summed over the frame), SSIM and PSNR of one uint8 frame pair (H, W, C)."""
    a = truth.astype(np.float64) / 255.0
    b = prediction.astype(np.float64) / 255.0
    channels = a.shape[-1]
    if channels == 1:
        a, b = a[..., 0], b[..., 0]
    ssim = structural_similarity(a, b, data_range=1.0, channel_axis=-1 if channels > 1 else None)
    if np.array_equal(a, b):
        psnr = PSNR_CAP_DB
    else:
        psnr = min(float(peak_signal_noise_ratio(a, b, data_range=1.0)), PSNR_CAP_DB)
    return {"mse": float(((a - b) ** 2).sum()), "ssim": float(ssim), "psnr": psnr}


def per_step_scores(truth: np.ndarray, prediction: np.ndarray) -> dict[str, list[float]]:
    """truth, prediction uint8 (N, K, H, W, C) -> each metric's mean over clips per future step."""
    n, k = truth.shape[:2]
    out = {name: [] for name in METRICS}
    for step in range(k):
        scores = [frame_scores(truth[i, step], prediction[i, step]) for i in range(n)]
        for name in METRICS:
            out[name].append(float(np.mean([s[name] for s in scores])))
    return out


def copy_last_frame(context: np.ndarray, horizon: int) -> np.ndarray:
    """The baseline: (N, M, H, W, C) contexts -> (N, horizon, H, W, C) repeats of each last frame."""
    return np.repeat(context[:, -1:], horizon, axis=1)


# --- the report ------------------------------------------------------------------------------


def evaluate(model: VideoRnn, heldout_clips, horizon: int | None = None, with_bits_per_dim: bool = True) -> dict:
    """Model ("mean" mode) vs copy-last-frame on held-out clips (N, T >= M+horizon, H, W, C) uint8.

    Returns per-horizon lists (index 0 = the first predicted frame) under "model" and
    "baseline", their means under "model_mean" / "baseline_mean", "beats_baseline_at" (the
    1-based horizons where the model's MSE is lower), "bits_per_dim" (None if not asked for)
    and what was measured.
    """
    cfg = model.config
    m = cfg.context_frames
    horizon = cfg.horizon if horizon is None else int(horizon)
    clips = prepare_clips(heldout_clips, cfg.channels, cfg.resolution)
    if clips.shape[1] < m + horizon:
        raise ValueError(f"clips have {clips.shape[1]} frames; evaluation needs {m} + {horizon}")
    if len(clips) == 0:
        raise ValueError("no held-out clips to evaluate")
    context, truth = clips[:, :m], clips[:, m : m + horizon]
    prediction = predict(model, context, horizon=horizon, mode="mean")
    model_scores = per_step_scores(truth, prediction)
    baseline_scores = per_step_scores(truth, copy_last_frame(context, horizon))
    beats = [step + 1 for step, (a, b) in enumerate(zip(model_scores["mse"], baseline_scores["mse"])) if a < b]
    bits = bits_per_dim(model, clips) if with_bits_per_dim and clips.shape[1] >= m + cfg.horizon else None
    return {
        "clips": len(clips),
        "context_frames": m,
        "horizons": list(range(1, horizon + 1)),
        "channels": cfg.channels,
        "resolution": cfg.resolution,
        "mse_convention": "sum of squared error over each frame's pixels and channels, pixels in [0, 1]",
        "model": model_scores,
        "baseline": baseline_scores,
        "model_mean": {name: float(np.mean(values)) for name, values in model_scores.items()},
        "baseline_mean": {name: float(np.mean(values)) for name, values in baseline_scores.items()},
        "beats_baseline_at": beats,
        "bits_per_dim": bits,
        "levels": cfg.levels,
    }


def _cell(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def format_table(report: dict) -> str:
    """The report as a markdown table: one row per horizon, model and baseline side by side."""
    bits = report.get("bits_per_dim")
    lines = [
        f"{report['clips']} held-out clips, {report['context_frames']} context frames, "
        f"{report['resolution']}x{report['resolution']}x{report['channels']}; MSE = per-frame sum on [0, 1] pixels; "
        f"head bits/dim ({report['levels']} levels): {_cell(bits, 4)}",
        "",
        "| step | MSE model | MSE copy-last | SSIM model | SSIM copy-last | PSNR model | PSNR copy-last |",
        "|---|---|---|---|---|---|---|",
    ]
    model, base = report["model"], report["baseline"]
    for index, step in enumerate(report["horizons"]):
        cells = [_cell(model["mse"][index], 1), _cell(base["mse"][index], 1), _cell(model["ssim"][index]),
                 _cell(base["ssim"][index]), _cell(model["psnr"][index], 2), _cell(base["psnr"][index], 2)]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    mm, bm = report["model_mean"], report["baseline_mean"]
    lines.append("| mean | " + " | ".join([_cell(mm["mse"], 1), _cell(bm["mse"], 1), _cell(mm["ssim"]), _cell(bm["ssim"]),
                                            _cell(mm["psnr"], 2), _cell(bm["psnr"], 2)]) + " |")
    lines += ["", f"model MSE below copy-last at steps: {report['beats_baseline_at'] or 'none'}"]
    return "\n".join(lines)


def error_plot_png(report: dict) -> bytes:
    """Per-step MSE (left) and SSIM (right) of the model and the copy-last baseline, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    steps = report["horizons"]
    for axis, metric, label in zip(figure.subplots(1, 2), ("mse", "ssim"), ("MSE per frame (sum)", "SSIM")):
        axis.plot(steps, report["model"][metric], marker="o", label="model (mean)")
        axis.plot(steps, report["baseline"][metric], marker="s", linestyle="--", label="copy last frame")
        axis.set_xlabel("future step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    figure.axes[0].legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# --- gallery -----------------------------------------------------------------------------


def _rgb(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError(f"frames must be uint8 (T, H, W, C), got {frames.dtype} {frames.shape}")
    return match_channels(frames, 3)


def side_by_side(context, truth, prediction) -> np.ndarray:
    """Frames (M + max(K_truth, K_pred), H, 3W + 2*GAP_PIXELS, 3) uint8: context | truth | prediction.

    While the context plays, all three panels show the context frame (the gaps are gray);
    afterwards the left panel holds the last context frame, the others show the truth and the
    prediction (the gaps turn red). A panel with no frame for a step (truth shorter than the
    prediction, say) is black.
    """
    context, truth, prediction = _rgb(context), _rgb(truth), _rgb(prediction)
    height, width = context.shape[1:3]
    if truth.shape[1:3] != (height, width) or prediction.shape[1:3] != (height, width):
        raise ValueError("context, truth and prediction must have the same frame size")
    future = max(len(truth), len(prediction))
    frames = np.zeros((len(context) + future, height, 3 * width + 2 * GAP_PIXELS, 3), np.uint8)
    starts = [0, width + GAP_PIXELS, 2 * (width + GAP_PIXELS)]
    for t, frame in enumerate(context):
        for start in starts:
            frames[t, :, start : start + width] = frame
        _paint_gaps(frames[t], starts, width, GAP_CONTEXT)
    for k in range(future):
        out = frames[len(context) + k]
        out[:, : width] = context[-1]
        for panel, start in zip((truth, prediction), starts[1:]):
            if k < len(panel):
                out[:, start : start + width] = panel[k]
        _paint_gaps(out, starts, width, GAP_FUTURE)
    return frames


def _paint_gaps(frame: np.ndarray, starts: list[int], width: int, colour) -> None:
    for start in starts[1:]:
        frame[:, start - GAP_PIXELS : start] = colour


def write_gif(path_or_buffer: str | os.PathLike | IO[bytes] | None, frames, fps: float) -> bytes | None:
    """An animated, looping GIF of uint8 frames (T, H, W, C). With None, returns its bytes (the
    caller writes them, atomically); otherwise writes to the path (atomically) or file object and returns None."""
    from PIL import Image

    frames = _rgb(frames)
    if len(frames) == 0 or not fps > 0:
        raise ValueError("a GIF needs at least one frame and a positive fps")
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    data = buffer.getvalue()
    if path_or_buffer is None:
        return data
    if hasattr(path_or_buffer, "write"):
        path_or_buffer.write(data)
    else:
        from corpora.atomic import atomic_write_bytes  # gallery side only, never the pyfunc

        atomic_write_bytes(path_or_buffer, data)
    return None
