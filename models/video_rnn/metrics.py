"""Held-out metrics of the video forecaster, beside the copy-last-frame baseline.

Per future step ("horizon"), on held-out clips (the split keeps a source file, and a scene, on
one side: no held-out clip shares one with training), the model's "mean" predictions and the copy-last-frame
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
- **bits/dim** of the PixelCNN head on the quantized future frames (`bits_per_dim`, exact;
  `bits_per_dim_pixel_by_pixel` computes it again through the sampling path).
- **score_vs_copy_last**: the mean over horizons of 1/2 * (MSE_model / MSE_copy_last +
  (1 - SSIM_model) / (1 - SSIM_copy_last)). 1.0 is as good as copying the last frame, lower is
  better; a blur that halves MSE but doubles 1 - SSIM scores 1.25. It is the family's champion
  metric (models.video_rnn.CHAMPION_RULE): MSE alone rewards blurred means.

For a one-channel model the truth is converted to luminance first, exactly as the model's
input is. The model's numbers are its "mean" predictions (the forecaster fed its own means),
the mode that minimises squared error; "sample" mode draws sharp frames whose squared error is
higher by construction, so it is not what these columns measure.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from models.video_rnn.frames import model_frames, prepare_clips, quantize, to_subpixels
from models.video_rnn.network import VideoRnn, head_nll
from models.video_rnn.sampling import draw_frames, float_clips, predict

PSNR_CAP_DB = 100.0  # identical frames give infinite PSNR; a cap keeps the means finite
SSIM_DATA_RANGE = 1.0  # frames in [0, 1]; OpenSTL's old scikit-image assumed 2 (module docstring)
PERFECT = 1e-12  # an error this small is none: a baseline that perfect cannot be divided by
METRICS = ("mse", "ssim", "psnr")
EVAL_CHUNK = 8  # clips per forward pass in likelihood evaluation, to bound memory


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


SSIM_WINDOW, SSIM_K1, SSIM_K2 = 7, 0.01, 0.03  # scikit-image's defaults, which frame_ssim uses


def ssim_torch(truth: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Differentiable mean SSIM of float frames (N, C, H, W) in [0, 1], as frame_ssim computes it
    (uniform 7x7 window, sample covariances, the mean over windows inside the frame): a loss."""
    def local_mean(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, SSIM_WINDOW, stride=1)

    a, b = truth.float(), prediction.float()
    sample = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
    mean_a, mean_b = local_mean(a), local_mean(b)
    var_a = sample * (local_mean(a * a) - mean_a**2)
    var_b = sample * (local_mean(b * b) - mean_b**2)
    cov = sample * (local_mean(a * b) - mean_a * mean_b)
    c1, c2 = (SSIM_K1 * SSIM_DATA_RANGE) ** 2, (SSIM_K2 * SSIM_DATA_RANGE) ** 2
    ssim = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))
    return ssim.mean()


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


# --- the likelihood of the quantized video ---------------------------------------------------


@torch.no_grad()
def bits_per_dim(model: VideoRnn, clips_uint8, chunk: int = EVAL_CHUNK) -> float:
    """Exact held-out bits per dimension of the quantized future frames of clips (N, T >= M+K, H,
    W, C) under the sampling model: the forecaster reads the quantized true frames (the chain
    rule over time) and the head scores every future frame's pixels, all in one forward."""
    model.eval()
    cfg = model.config
    m, k = cfg.context_frames, cfg.horizon
    clips = prepare_clips(clips_uint8, cfg.channels, cfg.resolution)[:, : m + k]
    total, count = 0.0, 0
    for start in range(0, len(clips), chunk):
        frames = model_frames(float_clips(model, clips[start : start + chunk]), cfg.levels)
        means, features, _ = model.read(frames[:, : m + k - 1])
        future = [x[:, m - 1 :].flatten(0, 1) for x in (features, means, frames[:, :-1], frames[:, 1:])]
        nll = head_nll(model, *future)
        total += nll.item() * len(frames)
        count += len(frames)
    return total / max(count, 1) / math.log(2.0)


@torch.no_grad()
def bits_per_dim_pixel_by_pixel(model: VideoRnn, clips_uint8) -> float:
    """bits_per_dim computed a second way, through the sampling path (slow; a cross-check): the
    recurrence and per-pixel logits of "sample" mode, with the true quantized pixels put in place
    of drawn ones and the true quantized frames fed back."""
    model.eval()
    cfg = model.config
    m, k = cfg.context_frames, cfg.horizon
    clips = prepare_clips(clips_uint8, cfg.channels, cfg.resolution)[:, : m + k]
    frames = model_frames(float_clips(model, clips), cfg.levels)
    _, logits = draw_frames(model, frames[:, :m], k, torch.Generator(), teacher=frames[:, m:])
    labels = to_subpixels(quantize(frames[:, m:].flatten(0, 1), cfg.levels))[:, 0]  # (B*K, H, W*C)
    nll = F.cross_entropy(logits.flatten(0, 1).float(), labels)
    return nll.item() / math.log(2.0)


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


def source_kind(source: str) -> str:
    """The kind of footage a clip's source path is (its top folder: moving_digits, real), or
    "other" for a file at the corpus' top level."""
    parts = source.replace("\\", "/").split("/")
    return parts[0] if len(parts) > 1 else "other"


def evaluate_by_kind(model: VideoRnn, heldout_clips, sources: list[str]) -> dict[str, dict]:
    """`evaluate` (without bits/dim) on the held-out clips of each kind of source, by kind."""
    kinds = np.array([source_kind(source) for source in sources])
    clips = np.asarray(heldout_clips)
    return {kind: evaluate(model, clips[kinds == kind], with_bits_per_dim=False) for kind in sorted(set(kinds))}


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
