"""Continuing clips with a trained model, and loading one from a bundle: what the registered
model runs. It imports only models/ (no corpora/, no dagster, no trainer).

"mean" mode feeds the forecaster its own clamped means; "sample" mode draws each frame pixel by
pixel from the head and feeds the sample back. Every frame the model reads is quantized first
(frames.model_frames), the context included.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models import bundle as bundles
from models.video_rnn.config import VideoRnnConfig
from models.video_rnn.frames import (
    dequantize, from_subpixels, match_channels, model_frames, prepare_clips, quantize, to_float_frames,
    to_subpixels, to_uint8_frames,
)
from models.video_rnn.network import VideoRnn, lost_detail
from models.video_rnn.pixelcnn import sample_frame

# /3: the bundle also holds example contexts and the corpus' frame rate; /2: the model reads
# frames quantized to `levels` (model_frames); /1 read 8-bit frames. A /2 bundle is the same model
# without examples, so it is served; the weights of every format have the same shapes, so any
# of them may start a run.
BUNDLE_FORMAT = "atelier.video_rnn/3"
SERVED_FORMATS = ("atelier.video_rnn/2", BUNDLE_FORMAT)
WARM_START_FORMATS = ("atelier.video_rnn/1", *SERVED_FORMATS)
MODES = ("mean", "sample")


def _context_tensor(model: VideoRnn, context) -> tuple[torch.Tensor, int, bool]:
    """uint8 (M,H,W,C), (B,M,H,W,C) or (M,H,W) -> float frames (B, M, C, H, W) in [0, 1] at the
    model's channels and resolution (not yet quantized), the input's channel count, and whether
    the input was a single clip."""
    context = np.asarray(context)
    if context.dtype != np.uint8:
        raise ValueError(f"context must be uint8 frames, not {context.dtype}")
    if context.ndim == 3:
        context = context[..., None]
    single = context.ndim == 4
    if single:
        context = context[None]
    if context.ndim != 5 or context.shape[-1] not in (1, 3) or context.shape[1] < 1:
        raise ValueError(f"context must be (M, H, W, C) or (B, M, H, W, C) with C in 1, 3; got {context.shape}")
    cfg = model.config
    return float_clips(model, prepare_clips(context, cfg.channels, cfg.resolution)), context.shape[-1], single


def float_clips(model: VideoRnn, clips_uint8: np.ndarray) -> torch.Tensor:
    """Prepared uint8 clips (N, T, H, W, C) -> float (N, T, C, H, W) in [0, 1] on the model's device."""
    device = next(model.parameters()).device
    return to_float_frames(torch.as_tensor(np.array(clips_uint8))).to(device)


def _roll_means(model: VideoRnn, context: torch.Tensor, horizon: int) -> torch.Tensor:
    """"mean" mode: the forecaster's clamped means (B, horizon, C, H, W) after the context (float
    frames, read quantized), each fed back as a model frame; with `keep_detail` each served mean
    also carries what quantizing the last context frame dropped."""
    means, _, state = model.read(model_frames(context, model.config.levels))
    first = means[:, -1:]
    rolled = torch.cat([first, model.roll(first[:, 0].clamp(0, 1), state, horizon - 1)[0]], dim=1)
    detail = lost_detail(context[:, -1:], model.config)
    return (rolled if detail is None else rolled + detail).clamp(0, 1)


def draw_frames(model: VideoRnn, context: torch.Tensor, horizon: int, generator: torch.Generator,
                teacher: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """"sample" mode: after the context (model frames, (B, M, C, H, W)), draw each future frame
    pixel by pixel from the head and feed it back. Returns the frames (B, horizon >= 1, C, H, W).

    With `teacher` (B, horizon, C, H, W) model frames, every pixel is the teacher's instead of a
    drawn one, so the same recurrence and per-pixel path score those frames: the second return
    value is then the (B, horizon, levels, H, W*C) logits of each pixel (sub-pixel layout).
    """
    cfg = model.config
    means, features, state = model.read(context)
    mean, feat, previous = means[:, -1], features[:, -1], context[:, -1]
    frames, logits = [], []
    for index in range(horizon):
        cond, centres = model.head_inputs(feat, mean, previous)
        force = None if teacher is None else to_subpixels(quantize(teacher[:, index], cfg.levels))[:, 0]
        chosen, seen = sample_frame(model.head, cond, centres, generator, return_logits=force is not None,
                                    force=force)
        frame = model_frames(from_subpixels(dequantize(chosen, cfg.levels)[:, None], cfg.channels), cfg.levels)
        frames.append(frame)
        logits.append(seen)
        previous = frame
        if index + 1 < horizon:
            mean, feat, state = model.step(frame, state)
    return torch.stack(frames, dim=1), (torch.stack(logits, dim=1) if teacher is not None else None)


@torch.no_grad()
def predict(model: VideoRnn, context_uint8, horizon: int | None = None, mode: str = "mean", seed: int = 0) -> np.ndarray:
    """Continue each context clip by `horizon` frames (default: the trained K; more rolls forward).

    "mean": the forecaster's mean frames (each fed back, quantized, as the next input). "sample":
    each frame is drawn pixel by pixel from the PixelCNN head and the sample is fed back; the
    same seed gives the same frames. The context is converted to the model's channels and
    resolution and quantized (model_frames); the output is uint8 at the model's resolution with
    the *input's* channel count, (horizon, H, W, C) for one clip or (B, horizon, H, W, C) for a batch.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    model.eval()
    cfg = model.config
    horizon = cfg.horizon if horizon is None else int(horizon)
    if horizon < 0:
        raise ValueError("horizon must not be negative")
    frames, in_channels, single = _context_tensor(model, context_uint8)
    if horizon == 0:
        result = np.zeros((frames.size(0), 0, cfg.resolution, cfg.resolution, in_channels), np.uint8)
        return result[0] if single else result
    if mode == "mean":
        future = _roll_means(model, frames, horizon)
    else:
        future, _ = draw_frames(model, model_frames(frames, cfg.levels), horizon,
                                torch.Generator().manual_seed(int(seed)))
    result = match_channels(to_uint8_frames(future), in_channels)
    return result[0] if single else result


@torch.no_grad()
def continue_clips(model: VideoRnn, context_uint8, horizon: int | None = None, mode: str = "mean", seed: int = 0,
                   with_context: bool = False) -> np.ndarray:
    """`predict`, and with `with_context` the context frames (at the model's resolution, with the
    input's channels) before the continuation: (M + horizon, H, W, C) for one clip or (B, M +
    horizon, H, W, C) for a batch, a video a person can follow from its start."""
    future = predict(model, context_uint8, horizon=horizon, mode=mode, seed=seed)
    if not with_context:
        return future
    context = np.asarray(context_uint8)  # predict has checked it
    if context.ndim == 3:
        context = context[..., None]
    single = context.ndim == 4
    shown = prepare_clips(context[None] if single else context, context.shape[-1], model.config.resolution)
    return np.concatenate([shown[0] if single else shown, future], axis=0 if single else 1)


def example_contexts(examples: np.ndarray | None, n: int) -> np.ndarray:
    """The first n of a bundle's example contexts (N, M, H, W, C), cycling when n is larger."""
    if examples is None or len(examples) == 0:
        raise ValueError("this model's bundle holds no example contexts: send a 'context' (uint8 frames (M, H, W, C))")
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    return examples[np.arange(n) % len(examples)]


# --- loading a bundle --------------------------------------------------------------------


def load_bundle(path: str | Path, formats: Sequence[str] = SERVED_FORMATS) -> dict:
    """A bundle of one of `formats` (by default those served: a format-1 model read other inputs,
    so it would not be the model it was measured as), read weights-only."""
    return bundles.load_bundle(path, formats)


def load_model(bundle: dict | str | Path) -> VideoRnn:
    """The bundle's model on CPU, in eval mode."""
    if not isinstance(bundle, dict):
        bundle = load_bundle(bundle)
    model = VideoRnn(VideoRnnConfig.from_dict(bundle["config"]))
    model.load_state_dict(bundle["state_dict"])
    return model.eval()


def bundle_examples(bundle: dict) -> np.ndarray | None:
    """The bundle's example contexts as uint8 (N, M, H, W, C), or None when it has none (format 2)."""
    examples = bundle.get("example_contexts")
    return None if examples is None else examples.numpy().astype(np.uint8, copy=False)
