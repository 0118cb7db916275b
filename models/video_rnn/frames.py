"""Pixels as the video model sees them: uint8 clips converted to the model's channels and
resolution, float frames in [0, 1], the quantisation to the head's levels that every frame
passes through before the model reads it (`model_frames`), and the sub-pixel layout that puts a
pixel's channels in the head's raster order."""
from __future__ import annotations

import numpy as np
import torch

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's "L" conversion
MAX_PIXEL = 255.0


def to_luminance(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> uint8 (..., 1)."""
    weights = np.asarray(LUMA, dtype=np.float32)
    return np.rint(frames.astype(np.float32) @ weights).clip(0, MAX_PIXEL).astype(np.uint8)[..., None]


def match_channels(frames: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (..., C) with C in (1, 3) -> (..., channels): luminance down, replication up."""
    have = frames.shape[-1]
    if have == channels:
        return frames
    if have == 3 and channels == 1:
        return to_luminance(frames)
    if have == 1 and channels == 3:
        return np.repeat(frames, 3, axis=-1)
    raise ValueError(f"frames must have 1 or 3 channels, not {have}")


def prepare_clips(clips, channels: int, resolution: int) -> np.ndarray:
    """uint8 (N, T, H, W, C) -> (N, T, resolution, resolution, channels): luminance or RGB, and an
    area resize when H is an integer multiple of `resolution`."""
    clips = np.asarray(clips)
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[2] != clips.shape[3]:
        raise ValueError(f"clips must be uint8 (N, T, H, H, C), got {clips.dtype} {clips.shape}")
    clips = match_channels(clips, channels)
    size = clips.shape[2]
    if size == resolution:
        return clips
    if size % resolution:
        raise ValueError(f"frames of {size}x{size} cannot be area-resized to {resolution}x{resolution}")
    factor = size // resolution
    n, t = clips.shape[:2]
    blocks = clips.reshape(n, t, resolution, factor, resolution, factor, channels).astype(np.float32)
    return np.rint(blocks.mean(axis=(3, 5))).astype(np.uint8)


def to_float_frames(clips: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, C) -> float (B, T, C, H, W) in [0, 1]."""
    return clips.permute(0, 1, 4, 2, 3).float().div_(MAX_PIXEL)


def to_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    """float (B, T, C, H, W) in [0, 1] -> uint8 (B, T, H, W, C)."""
    pixels = frames.float().clamp(0, 1).mul(MAX_PIXEL).round().to(torch.uint8)
    return pixels.permute(0, 1, 3, 4, 2).contiguous().cpu().numpy()


def quantize(frames: torch.Tensor, levels: int) -> torch.Tensor:
    """[0, 1] -> level indices 0..levels-1; the ends 0 and 1 are levels exactly (black stays black)."""
    return frames.clamp(0, 1).mul(levels - 1).round().long()


def dequantize(levels_index: torch.Tensor, levels: int) -> torch.Tensor:
    return levels_index.float() / (levels - 1)


def model_frames(frames: torch.Tensor, levels: int) -> torch.Tensor:
    """Frames as the model reads them: clamped to [0, 1] and snapped to the head's `levels`
    intensities, dequantize(quantize(x)), the variable whose likelihood the head reports.

    Every frame that enters the model passes through here. When `frames` carries a gradient
    (the free-running branch feeds back its own means), the value is the snapped one exactly and
    the gradient is the clamp's (straight-through), so the recurrence still learns through them.
    """
    snapped = dequantize(quantize(frames.float(), levels), levels)  # in float32: bf16 would misround near level edges
    if not frames.requires_grad:
        return snapped
    clamped = frames.float().clamp(0, 1)
    return snapped + (clamped - clamped.detach())


def to_subpixels(frames: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W*C): each pixel's channels become C adjacent columns, so raster
    order over the result is (row, column, channel) order."""
    n, c, h, w = frames.shape
    return frames.permute(0, 2, 3, 1).reshape(n, 1, h, w * c)


def from_subpixels(frames: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, 1, H, W*C) -> (N, C, H, W), undoing to_subpixels."""
    n, _, h, wc = frames.shape
    return frames.reshape(n, h, wc // channels, channels).permute(0, 3, 1, 2)
