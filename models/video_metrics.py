"""Held-out metrics and gallery helpers for the video forecaster.

Per future step ("horizon"), on held-out clips (the split is by source file, so no held-out
clip shares a file with training), the model's "mean" predictions and the copy-last-frame
baseline (every future frame = the last context frame) are scored against the true 8-bit
frames, pixels in [0, 1], with the conventions of OpenSTL's `metric` function
(github.com/chengtan9907/OpenSTL, openstl/core/metrics.py), the benchmark code behind most
Moving-MNIST numbers since PredRNN:

- **MSE** follows OpenSTL's `MSE` (spatial_norm off): the squared error averaged over clips
  (and, in OpenSTL, over time) per pixel and channel, then summed over the frame's pixels and
  channels. So a 64x64 one-channel frame's MSE is 4096 times its per-pixel mean. OpenSTL pools
  all horizons into one number; we report each horizon alone, and the mean over horizons equals
  OpenSTL's pooled value. OpenSTL scores the model's raw float output; ours is the served
  prediction, clamped to [0, 1] and rounded to 8 bits.
- **SSIM** as OpenSTL's `metric` computes it (scikit-image's structural_similarity per frame,
  7x7 uniform window, per-channel mean for RGB, averaged over frames), with one difference:
  the data range is 1, the true range of [0, 1] frames. OpenSTL pins scikit-image <= 0.19.3,
  which took a float image's range from its dtype (-1..1, i.e. 2); that weakens SSIM's
  stabilising constants and lifts every score, so its published SSIM is higher than ours for
  the same frames.
- **PSNR** follows OpenSTL's `PSNR` (min_max_norm): -10 log10 of the frame's mean squared error
  over pixels and channels, per frame, averaged. OpenSTL returns infinity for a perfect frame;
  we cap it at PSNR_CAP_DB so that means stay finite.
- **bits/dim** of the PixelCNN head on the quantized future frames (models.video_rnn.bits_per_dim).
- **score_vs_copy_last**: the mean over horizons of 1/2 * (MSE_model / MSE_copy_last +
  (1 - SSIM_model) / (1 - SSIM_copy_last)). 1.0 is as good as copying the last frame, lower is
  better; a blur that halves MSE but doubles 1 - SSIM scores 1.25. It is the family's champion
  metric (models.video_rnn.CHAMPION_RULE): MSE alone rewards blurred means.

For a one-channel model the truth is converted to luminance first, exactly as the model's
input is. The model's numbers are its "mean" predictions (the forecaster fed its own means),
the mode that minimises squared error; "sample" mode draws sharp frames whose squared error is
higher by construction, so it is not what these columns measure.

Gallery helpers: `side_by_side` (context | truth | prediction panels), `write_gif` (PIL) and
`error_plot_png` (matplotlib's Agg canvas, no pyplot state). MP4 is corpora.video.write_video.
"""
from __future__ import annotations

import io
import math
import os
from typing import IO

import numpy as np
from skimage.metrics import structural_similarity

from models.video_rnn import VideoRnn, bits_per_dim, match_channels, predict, prepare_clips

PSNR_CAP_DB = 100.0  # identical frames give infinite PSNR; a cap keeps the means finite
SSIM_DATA_RANGE = 1.0  # frames in [0, 1]; OpenSTL's old scikit-image assumed 2 (module docstring)
PERFECT = 1e-12  # an error this small is none: a baseline that perfect cannot be divided by
GAP_PIXELS = 2  # between the side-by-side panels
GAP_CONTEXT = (96, 96, 96)  # gap colour while the context plays
GAP_FUTURE = (200, 40, 40)  # and while the future plays, so a viewer sees where prediction starts
METRICS = ("mse", "ssim", "psnr")
PLOT_SIZE_INCHES, PLOT_DPI = (6.0, 3.2), 100


# --- scores, OpenSTL's conventions (module docstring) -----------------------------------------


def unit_frames(frames_uint8: np.ndarray) -> np.ndarray:
    """uint8 -> float64 in [0, 1]."""
    return np.asarray(frames_uint8, dtype=np.float64) / 255.0


def mse_by_horizon(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """truth, prediction float (N, K, ...) in [0, 1] -> (K,): at each horizon, OpenSTL's MSE of that
    horizon alone (squared error averaged over clips, summed over the frame's pixels and channels)."""
    error = (np.asarray(prediction, np.float64) - np.asarray(truth, np.float64)) ** 2
    return error.mean(axis=0).reshape(error.shape[1], -1).sum(axis=1)


def frame_ssim(truth: np.ndarray, prediction: np.ndarray) -> float:
    """SSIM of one float frame pair (H, W, C) in [0, 1], as OpenSTL's `metric` computes it."""
    if truth.shape[-1] == 1:
        return float(structural_similarity(prediction[..., 0], truth[..., 0], data_range=SSIM_DATA_RANGE))
    return float(structural_similarity(prediction, truth, data_range=SSIM_DATA_RANGE, channel_axis=-1))


def frame_psnr(truth: np.ndarray, prediction: np.ndarray) -> float:
    """PSNR (dB) of one float frame pair in [0, 1], as OpenSTL's `PSNR`, capped at PSNR_CAP_DB."""
    mse = float(np.mean((prediction.astype(np.float32) - truth.astype(np.float32)) ** 2))  # float32, as OpenSTL
    return PSNR_CAP_DB if mse == 0 else min(-10.0 * math.log10(mse), PSNR_CAP_DB)


def frame_scores(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """MSE (summed over the frame), SSIM and PSNR of one uint8 frame pair (H, W, C)."""
    a, b = unit_frames(truth), unit_frames(prediction)
    return {"mse": float(((a - b) ** 2).sum()), "ssim": frame_ssim(a, b), "psnr": frame_psnr(a, b)}


def per_step_scores(truth: np.ndarray, prediction: np.ndarray) -> dict[str, list[float]]:
    """truth, prediction uint8 (N, K, H, W, C) -> each metric per future step (the mean over clips)."""
    a, b = unit_frames(truth), unit_frames(prediction)
    n, k = a.shape[:2]
    return {
        "mse": [float(v) for v in mse_by_horizon(a, b)],
        "ssim": [float(np.mean([frame_ssim(a[i, t], b[i, t]) for i in range(n)])) for t in range(k)],
        "psnr": [float(np.mean([frame_psnr(a[i, t], b[i, t]) for i in range(n)])) for t in range(k)],
    }


def _error_ratio(model_error: float, baseline_error: float) -> float:
    if baseline_error <= PERFECT:  # copy-last is perfect here: only a perfect model matches it
        return 1.0 if model_error <= PERFECT else math.inf
    return model_error / baseline_error


def score_by_horizon(model: dict[str, list[float]], baseline: dict[str, list[float]]) -> list[float]:
    """Per horizon, 1/2 * (MSE_model / MSE_copy_last + (1 - SSIM_model) / (1 - SSIM_copy_last)):
    1.0 is copy-last's quality, lower is better. Squared error alone rewards blur; 1 - SSIM
    penalises it, and each is measured against the same baseline so that neither dominates."""
    return [0.5 * (_error_ratio(mse, base_mse) + _error_ratio(1.0 - ssim, 1.0 - base_ssim))
            for mse, base_mse, ssim, base_ssim in zip(model["mse"], baseline["mse"], model["ssim"], baseline["ssim"])]


def copy_last_frame(context: np.ndarray, horizon: int) -> np.ndarray:
    """The baseline: (N, M, H, W, C) contexts -> (N, horizon, H, W, C) repeats of each last frame."""
    return np.repeat(context[:, -1:], horizon, axis=1)


# --- the report ------------------------------------------------------------------------------


def evaluate(model: VideoRnn, heldout_clips, horizon: int | None = None, with_bits_per_dim: bool = True) -> dict:
    """Model ("mean" mode) vs copy-last-frame on held-out clips (N, T >= M+horizon, H, W, C) uint8.

    Returns per-horizon lists (index 0 = the first predicted frame) under "model" and
    "baseline", their means under "model_mean" / "baseline_mean", "score_by_horizon" and its
    mean "score_vs_copy_last", "beats_baseline_at" (the 1-based horizons where the score is
    below 1), "mse_below_baseline_at" (where the model's MSE alone is lower), "bits_per_dim"
    (None if not asked for) and what was measured.
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
    scores = score_by_horizon(model_scores, baseline_scores)
    steps = list(range(1, horizon + 1))
    mse_pairs = zip(steps, model_scores["mse"], baseline_scores["mse"])
    bits = bits_per_dim(model, clips) if with_bits_per_dim and clips.shape[1] >= m + cfg.horizon else None
    return {
        "clips": len(clips),
        "context_frames": m,
        "horizons": steps,
        "channels": cfg.channels,
        "resolution": cfg.resolution,
        "mse_convention": "OpenSTL's MSE per horizon: squared error summed over each frame's pixels and channels, "
                          "pixels in [0, 1], averaged over clips",
        "ssim_convention": f"scikit-image SSIM, 7x7 uniform window, data_range={SSIM_DATA_RANGE:g}",
        "model": model_scores,
        "baseline": baseline_scores,
        "model_mean": {name: float(np.mean(values)) for name, values in model_scores.items()},
        "baseline_mean": {name: float(np.mean(values)) for name, values in baseline_scores.items()},
        "score_by_horizon": scores,
        "score_vs_copy_last": float(np.mean(scores)),
        "beats_baseline_at": [step for step, score in zip(steps, scores) if score < 1.0],
        "mse_below_baseline_at": [step for step, model_mse, baseline_mse in mse_pairs if model_mse < baseline_mse],
        "bits_per_dim": bits,
        "levels": cfg.levels,
    }


def _cell(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def format_table(report: dict) -> str:
    """The report as a markdown table: one row per horizon, model and copy-last side by side, and
    the score the champion rule reads."""
    bits = report.get("bits_per_dim")
    lines = [
        f"{report['clips']} held-out clips, {report['context_frames']} context frames, "
        f"{report['resolution']}x{report['resolution']}x{report['channels']}; metrics as OpenSTL computes them "
        f"(MSE = per-frame sum on [0, 1] pixels, SSIM with data_range {SSIM_DATA_RANGE:g}); "
        f"score = 1/2 (MSE / MSE copy-last + (1 - SSIM) / (1 - SSIM copy-last)), 1 = copy-last, lower is better; "
        f"head bits/dim ({report['levels']} levels): {_cell(bits, 4)}",
        "",
        "| step | MSE model | MSE copy-last | SSIM model | SSIM copy-last | PSNR model | PSNR copy-last | score |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def row(label, model: dict, base: dict, score: float, index=None) -> str:
        pick = (lambda values: values[index]) if index is not None else (lambda value: value)
        cells = [_cell(pick(model["mse"]), 1), _cell(pick(base["mse"]), 1), _cell(pick(model["ssim"])),
                 _cell(pick(base["ssim"])), _cell(pick(model["psnr"]), 2), _cell(pick(base["psnr"]), 2), _cell(score)]
        return f"| {label} | " + " | ".join(cells) + " |"

    for index, step in enumerate(report["horizons"]):
        lines.append(row(step, report["model"], report["baseline"], report["score_by_horizon"][index], index))
    lines.append(row("mean", report["model_mean"], report["baseline_mean"], report["score_vs_copy_last"]))
    lines += ["", f"score below 1 (better than copy-last) at steps: {report['beats_baseline_at'] or 'none'}; "
                  f"model MSE below copy-last at steps: {report['mse_below_baseline_at'] or 'none'}"]
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
