"""Video family: a ConvLSTM forecaster with a conditional gated PixelCNN head.

Given M context frames the model predicts K future frames (default 10 -> 10 at 64x64, the
Moving-MNIST protocol of Srivastava et al. 2015 and Shi et al. 2015). It has two parts:

- **Forecaster** (ConvLSTM, Shi et al. 2015 "Convolutional LSTM Network"): a stack of
  ConvLSTM cells reads one frame per step and carries its (h, c) state over time; a 1x1 conv
  of the top hidden state gives the mean prediction of the next frame. Frames enter and leave
  through the space-to-depth "patch" reshape of PredRNN (Wang et al. 2017): a 64x64 frame with
  patch 4 is a 16x16 map of 16 channels, so the recurrent convs run on 16x16 maps, which is what
  makes CPU training possible. The encoder and the forecaster of Shi et al. share one stack
  here (as in PredRNN): the stack "encodes" while it reads the context and "forecasts" after,
  because the forecaster must be able to read frames (its own samples in "sample" mode; Shi's
  input-less forecaster could not). The cells have no peephole connections (as PredRNN and
  most re-implementations). With `residual` (the default) the mean is the frame just read plus
  a learned change whose output conv starts at zero, so an untrained model is the copy-last-
  frame baseline. Without it, the demo run predicted the two held-out real clips far worse
  than copy-last (step-1 MSE 63 vs 8), because only 9 of 115 training clips are real video;
  with it, 13 vs 8, and the overall mean MSE fell from 136 to 124 (250 steps each).
- **PixelCNN head** (gated PixelCNN, van den Oord et al. 2016 "Conditional Image Generation
  with PixelCNN Decoders"): vertical and horizontal stacks of gated masked convolutions, so
  there is no blind spot, conditioned at every layer (added before the tanh/sigmoid gate) on a
  per-pixel map made from the forecaster's state for that time step: a 1x1 conv of the top
  hidden state unpatched to full resolution, the mean prediction, and the previous frame.
  Intensities are quantized to `levels` values (16 by default), the head gives a softmax over
  them per pixel, and so the model has an exact likelihood, reported in bits per dimension,
  and frames can be sampled pixel by pixel as in Video Pixel Networks (Kalchbrenner et al.
  2017). Bits/dim here are over `levels` values per dimension (at most log2(levels) bits),
  not over 256 values: they are not comparable with CIFAR-style bits/dim.
  Each pixel's distribution is a mixture of three components: discretized Gaussians (a
  softmax over -precision * (level - centre)^2) around the forecaster's clamped mean and
  around the previous frame, and the PixelCNN's softmax, with per-pixel weights and precisions
  from a 1x1 conv of the conditioning map (equal weights and one level wide at the start). The
  Gaussians depend on no pixel of the frame being sampled, so the ordering is untouched.
  Why: in a demo run the plain PixelCNN head learned too little about the real clips (9 of
  115 training clips) to use the forecast and sampled noise there, scoring far worse on them
  than a fixed Gaussian around the previous frame. Adding one Gaussian's logits to the
  PixelCNN's did not help: its light tails made training widen it everywhere to pay for digit
  pixels that change completely. A mixture leaves those pixels to the PixelCNN component.

The modelled variable is the video quantized to `levels` intensities, and it is the only thing
the model ever reads: `model_frames` (dequantize(quantize(x))) is applied wherever frames enter
it, in training, in `bits_per_dim` and in both predict modes: the context, the teacher-forced
future, the frames fed back (samples, or the clamped means in "mean" mode) and the head's
previous-frame input and centre. So bits/dim is the exact negative log-likelihood of the
quantized future given the quantized past, and "sample" mode runs the forecaster on the same
kind of input it was trained on. Only the forecaster's mean targets and the held-out metrics
(MSE, SSIM, PSNR) use the true 8-bit frames, since those score predictions of the real video.

Channels: `channels=1` (the default) converts every input to luminance (ITU-R BT.601 weights;
the moving digits are gray already, so nothing is lost there); `channels=3` keeps RGB. With
three channels the head orders R, G, B within a pixel exactly: the frame is laid out with each
pixel's channels as three adjacent columns ("sub-pixels", width 3W), the raster order over that
layout is the PixelCNN order over (row, column, channel), and the conditioning map carries a
one-hot of the sub-pixel's channel. The vertical stack then sees 3x fewer pixels sideways.

Training (one step, all on the same batch):
- the stack reads the M context frames (quantized), then the future twice from the same
  state: once fed the quantized true frames ("teacher-forced": one-step predictions, and the
  head's conditioning, exactly as the likelihood factorises p(x_t | x_<t) and as "sample"
  mode runs with sampled frames fed back) and once fed its own clamped, quantized mean
  predictions ("free-running": exactly what "mean" mode does at inference; the gradient passes
  the quantization straight through). So there is no scheduled sampling (Bengio et al. 2015;
  PredRNN's variant): each branch is trained on the inputs it gets at inference, at the price
  of running the future twice (M + 2K - 2 recurrent steps instead of M + K - 1);
- loss = mse_weight * (MSE against the true frames of the free-running future and of all
  teacher-forced one-step predictions) + nll_weight * the head's cross-entropy (nats/dim) on
  quantized true future frames, with the head teacher-forced (it sees the true pixels above
  and to the left). The head is evaluated on `head_frames` random future frames per clip, an
  unbiased estimate of the whole cross-entropy at a fraction of the cost;
- augmentation: random horizontal/vertical flips, transposition and time reversal per clip
  (moving digits bounce, so reversed clips are plausible), and a random start when a clip is
  longer than M + K.

Sampling a frame pixel by pixel with a full-image forward per pixel would cost H*W forwards of
the whole head. Two exact shortcuts make it cheap. The vertical stack at row i depends only on
rows above, so it runs once per row, on the `rows_above` rows the head can see (a window edge
that is not an image edge is beyond the receptive field, so its zero padding never reaches row
i). The horizontal stack at (i, j) depends only on row i left of j and the cached vertical
features, so each layer keeps a buffer of its input along the row and a pixel costs one small
matrix product per layer (the caching of Ramachandran et al. 2017, "Fast Generation for
Convolutional Autoregressive Models"); that per-pixel step runs in numpy, whose per-call
overhead is several times smaller than torch's on 16-channel vectors. The logits equal the full
forward's up to float rounding (the tests check it). Measured on the shared 2-core machine, one
thread, demo head: about 0.45 s per 64x64 frame, 5.8-8.5 s for one 10-frame grayscale
continuation (load average 3.7-3.9), 7.9 s for a batch of 4 (the per-pixel cost is mostly
overhead, so clips sampled together share it); "mean" mode takes under 0.1 s.

A demo run (300 steps, 2 threads, bf16 autocast) takes about 3 minutes on two free cores and
many times longer when another training shares them. Its mean forecasts beat copy-last-frame on
squared error but not on SSIM: the means blur. That is why the champion rule (CHAMPION_RULE)
weighs SSIM against copy-last as much as MSE. Samples are speckled digits that fade within a
few frames, and noise textures on real clips (only 9 training clips are real video); both need
longer training (cpu-long, gpu) more than a different design.

This module is imported by the registered pyfunc in a process that has only models/ on its
path: it must not import corpora/, dagster, or models.trainer at module level.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.champion import ChampionRule, Guard
from models.family_config import FamilyConfig

# /2: the model reads frames quantized to `levels` (model_frames); /1 read 8-bit frames. The
# weights have the same shapes, so a /1 bundle can still start a run (WARM_START_FORMATS).
BUNDLE_FORMAT = "atelier.video_rnn/2"
WARM_START_FORMATS = ("atelier.video_rnn/1", BUNDLE_FORMAT)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's "L" conversion
FORGET_BIAS = 1.0  # LSTM forget gates start open (Jozefowicz et al. 2015)
MAX_PIXEL = 255.0
MODES = ("mean", "sample")
EVAL_CHUNK = 8  # clips per forward pass in likelihood evaluation, to bound memory
PRIOR_PRECISION = 0.5  # the head's Gaussian components start one level wide: -0.5 * (level - centre)^2
PRIOR_CENTRES = 2  # Gaussian components of the head's mixture: around the forecast mean and the previous frame


# --- configuration -----------------------------------------------------------------------


@dataclass
class VideoRnnConfig(FamilyConfig):
    log_every_cap = 50

    context_frames: int = 10  # M: frames the model reads before predicting
    horizon: int = 10  # K: future frames it is trained to predict (predict() may roll further)
    resolution: int = 64  # square frames; clips of another size are area-resized by an integer factor
    channels: int = 1  # 1: luminance, 3: RGB
    patch: int = 4  # space-to-depth factor in front of the ConvLSTM (PredRNN)
    hidden: tuple[int, ...] = (64, 64)  # ConvLSTM widths, bottom layer first
    kernel: int = 3  # ConvLSTM kernel (on the patched map: 3 spans 12 pixels at patch 4)
    levels: int = 16  # quantized intensities per channel the head predicts
    cond_channels: int = 8  # forecaster features per pixel given to the head
    head_width: int = 16  # channels of each PixelCNN stack
    head_layers: int = 4  # gated layers, the first one mask-A-like (sees strictly earlier pixels)
    head_first_kernel: int = 5  # first layer: rows above and columns each side = kernel // 2
    head_kernel: int = 3  # later layers
    head_frames: int = 1  # future frames per clip the head's loss sees each step
    residual: bool = True  # the mean is the frame just read plus a learned change (starts as copy-last)
    mse_weight: float = 10.0
    nll_weight: float = 1.0
    augment: bool = True
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * this over `steps`
    grad_clip: float = 5.0
    batch_size: int = 8
    steps: int = 300
    seed: int = 0

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if self.context_frames < 1 or self.horizon < 1:
            raise ValueError("context_frames and horizon must be at least 1")
        if self.patch < 1 or self.resolution % self.patch:
            raise ValueError(f"resolution {self.resolution} must be a multiple of patch {self.patch}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError("hidden needs at least one positive width")
        for name in ("kernel", "head_first_kernel", "head_kernel"):
            value = getattr(self, name)
            if value < 1 or value % 2 == 0:
                raise ValueError(f"{name} must be odd and positive, not {value}")
        if self.head_first_kernel < 3 or self.head_kernel < 3:
            raise ValueError("head kernels must be at least 3 (a kernel of 1 sees no earlier pixel)")
        if not 2 <= self.levels <= 256:
            raise ValueError(f"levels must lie in 2..256, not {self.levels}")
        if self.head_layers < 1 or not 1 <= self.head_frames <= self.horizon:
            raise ValueError("head_layers must be >= 1 and head_frames within 1..horizon")

    @property
    def clip_frames(self) -> int:
        return self.context_frames + self.horizon

    @classmethod
    def profile(cls, name: str, **overrides) -> "VideoRnnConfig":
        values = dict(PROFILES[name])
        values.update(overrides)
        return cls(**values)


PROFILES: dict[str, dict] = {
    # 64x64, 10 -> 10, grayscale, bf16 autocast: 0.45-0.62 s a step on 2 free cores (~3 minutes),
    # ~1 s on one core (~5 minutes); far slower when another job shares the cores (module docstring)
    "demo": dict(hidden=(64, 64), kernel=3, head_width=16, head_layers=4, head_frames=1, batch_size=8,
                 lr=2e-3, steps=300),
    # twice the batch and head frames, a wider and deeper head: estimated ~2 s a step from step
    # timings (not run end to end), about 20 minutes
    "cpu-long": dict(hidden=(64, 64), kernel=3, head_width=24, head_layers=5, head_frames=2, batch_size=16,
                     lr=2e-3, steps=600),
    # PredRNN-sized recurrence (4 x 128) and a VPN-like head trained on every future frame
    "gpu": dict(hidden=(128, 128, 128, 128), kernel=5, cond_channels=16, head_width=64, head_layers=8,
                head_frames=10, batch_size=32, lr=1e-3, steps=50000),
}


# --- pixels ------------------------------------------------------------------------------


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


# --- the ConvLSTM forecaster -------------------------------------------------------------


class ConvLSTMCell(nn.Module):
    """One ConvLSTM layer (Shi et al. 2015, without peepholes): every gate is a convolution of
    [input, h]. The state is an explicit (h, c) pair; None means zeros."""

    def __init__(self, in_channels: int, hidden: int, kernel: int):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel, padding=kernel // 2)
        with torch.no_grad():
            self.gates.bias.zero_()
            self.gates.bias[hidden : 2 * hidden].fill_(FORGET_BIAS)

    def initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = x.new_zeros(x.size(0), self.hidden, x.size(2), x.size(3))
        return zeros, zeros

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        h, c = self.initial_state(x) if state is None else state
        i, f, g, o = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTMStack(nn.Module):
    """ConvLSTM layers on top of each other; `step` advances one frame, `forward` a sequence."""

    def __init__(self, in_channels: int, hidden: Sequence[int], kernel: int):
        super().__init__()
        widths = [in_channels, *hidden]
        self.cells = nn.ModuleList(ConvLSTMCell(a, b, kernel) for a, b in zip(widths, widths[1:]))

    def step(self, x: torch.Tensor, states: list | None = None) -> tuple[torch.Tensor, list]:
        """x (B, C, h, w) -> top hidden state (B, hidden[-1], h, w), new per-layer (h, c) states."""
        states = states if states is not None else [None] * len(self.cells)
        new_states = []
        for cell, state in zip(self.cells, states):
            h, c = cell(x, state)
            new_states.append((h, c))
            x = h
        return x, new_states

    def forward(self, xs: torch.Tensor, states: list | None = None) -> tuple[torch.Tensor, list]:
        """xs (B, T, C, h, w) -> top hidden states (B, T, hidden[-1], h, w), the final states."""
        outputs = []
        for t in range(xs.size(1)):
            out, states = self.step(xs[:, t], states)
            outputs.append(out)
        return torch.stack(outputs, dim=1), states


# --- the gated PixelCNN head -------------------------------------------------------------


def gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class PixelCnnHead(nn.Module):
    """Gated PixelCNN with vertical and horizontal stacks, on (N, 1, H, W) maps (sub-pixels).

    The vertical features at row i see only rows above i; the horizontal features at (i, j)
    see row i left of j and the vertical features at (i, j). The first layer's convolutions
    exclude the current row (vertical) and pixel (horizontal), the "mask A" of PixelCNN; later
    layers include the current position of their input, which already excludes it ("mask B").
    Masking is done by padding and kernel shape, so no weight is ever masked out.
    """

    def __init__(self, cond_channels: int, width: int, layers: int, first_kernel: int, kernel: int, levels: int):
        super().__init__()
        self.levels, self.width, self.layers = levels, width, layers
        self.first_reach, self.reach = first_kernel // 2, kernel // 2
        r0, r = self.first_reach, self.reach
        self.v_convs = nn.ModuleList([nn.Conv2d(1, 2 * width, (r0, 2 * r0 + 1))] +
                                     [nn.Conv2d(width, 2 * width, (r + 1, 2 * r + 1)) for _ in range(layers - 1)])
        self.h_convs = nn.ModuleList([nn.Conv2d(1, 2 * width, (1, r0))] +
                                     [nn.Conv2d(width, 2 * width, (1, r + 1)) for _ in range(layers - 1)])
        self.v_to_h = nn.ModuleList(nn.Conv2d(width, 2 * width, 1) for _ in range(layers))
        self.h_out = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))
        self.cond = nn.Conv2d(cond_channels, layers * 4 * width, 1)  # per layer: vertical, horizontal biases
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, levels, 1))
        # per pixel: the weights of the mixture's components (Gaussians first, PixelCNN last) and
        # the Gaussians' precisions; they start equal and one level wide
        self.mixture = nn.Conv2d(cond_channels, 2 * PRIOR_CENTRES + 1, 1)
        nn.init.zeros_(self.mixture.weight)
        nn.init.zeros_(self.mixture.bias)
        nn.init.constant_(self.mixture.bias[PRIOR_CENTRES + 1 :], math.log(math.expm1(PRIOR_PRECISION)))  # softplus^-1
        self.register_buffer("level_grid", torch.arange(levels, dtype=torch.float32).view(1, 1, levels, 1, 1),
                             persistent=False)

    @property
    def rows_above(self) -> int:
        """How many rows above a pixel its logits depend on."""
        return self.first_reach + self.reach * (self.layers - 1)

    @property
    def cols_left(self) -> int:
        """How many pixels to its left (same row) its logits depend on through the horizontal stack."""
        return self.first_reach + self.reach * (self.layers - 1)

    def embed(self, levels_index: torch.Tensor) -> torch.Tensor:
        """Level indices -> the head's input scale [-1, 1]."""
        return levels_index.float() * (2.0 / (self.levels - 1)) - 1.0

    def condition(self, cond: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-layer vertical and horizontal gate biases (N, 2*width, H, W) from the conditioning map."""
        parts = self.cond(cond).chunk(2 * self.layers, dim=1)
        return list(parts[0::2]), list(parts[1::2])

    def vertical(self, x: torch.Tensor, cond_v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Vertical features of every layer for the rows of x (any window of whole rows)."""
        rows = x.size(2)
        features, v = [], x
        for layer, conv in enumerate(self.v_convs):
            kh, kw = conv.kernel_size
            above = kh if layer == 0 else kh - 1  # layer 0: strictly above; later: up to the same row
            v = gate(conv(F.pad(v, (kw // 2, kw // 2, above, 0)))[:, :, :rows] + cond_v[layer])
            features.append(v)
        return features

    def row_biases(self, vertical: Sequence[torch.Tensor], cond_h: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """What the horizontal stack adds before each gate: the vertical link plus the conditioning."""
        return [link(v) + c for link, v, c in zip(self.v_to_h, vertical, cond_h)]

    def horizontal(self, x: torch.Tensor, biases: Sequence[torch.Tensor]) -> torch.Tensor:
        """The horizontal stack's last features for x (any window of columns, ending at the target)."""
        cols = x.size(3)
        h = x
        for layer, (conv, out) in enumerate(zip(self.h_convs, self.h_out)):
            kw = conv.kernel_size[1]
            left = kw if layer == 0 else kw - 1  # layer 0: strictly left; later: up to the same pixel
            update = out(gate(conv(F.pad(h, (left, 0, 0, 0)))[..., :cols] + biases[layer]))
            h = update if layer == 0 else h + update
        return h

    def prior(self, cond: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The parts of the mixture that depend on no pixel of the frame: the log of the weighted
        Gaussians' sum (N, levels, H, W) around `centres` (N, PRIOR_CENTRES, H, W) in [0, 1], and the
        PixelCNN component's log weight (N, 1, H, W)."""
        params = self.mixture(cond).float()
        log_weights = F.log_softmax(params[:, : PRIOR_CENTRES + 1], dim=1)
        precision = F.softplus(params[:, PRIOR_CENTRES + 1 :])[:, :, None]
        gaussians = -precision * (self.level_grid - centres.float()[:, :, None] * (self.levels - 1)) ** 2
        weighted = log_weights[:, :PRIOR_CENTRES, None] + F.log_softmax(gaussians, dim=2)
        return weighted.logsumexp(dim=1), log_weights[:, PRIOR_CENTRES:]

    def forward(self, x: torch.Tensor, cond: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """x (N, 1, H, W) on the input scale, cond (N, D, H, W), centres (N, PRIOR_CENTRES, H, W)
        -> log-probabilities (N, levels, H, W) of the mixture (usable as logits)."""
        cond_v, cond_h = self.condition(cond)
        biases = self.row_biases(self.vertical(x, cond_v), cond_h)
        prior, log_weight = self.prior(cond, centres)
        pixel_cnn = F.log_softmax(self.out(self.horizontal(x, biases)).float(), dim=1)
        return torch.logaddexp(prior, log_weight + pixel_cnn)


def gumbel_noise(shape: Sequence[int], generator: torch.Generator, device) -> torch.Tensor:
    """Gumbel(0, 1) noise: argmax(logits + noise) is a sample of softmax(logits)."""
    uniform = torch.rand(*shape, generator=generator).clamp_min(torch.finfo(torch.float32).tiny)
    return (-torch.log(-torch.log(uniform))).to(device)


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _np_gate(x: np.ndarray) -> np.ndarray:
    a, b = np.split(x, 2, axis=-1)
    return np.tanh(a) * (0.5 * np.tanh(0.5 * b) + 0.5)  # sigmoid(b) = (1 + tanh(b/2)) / 2


class _RowSampler:
    """The horizontal stack of one row, advanced one pixel at a time.

    Each layer keeps a buffer of its input along the row (padded on the left with the zeros the
    full forward's padding supplies), so a pixel costs one small matrix product per layer:
    layer l's output at column j needs only columns j-reach..j of layer l-1, all computed
    already. This is the full forward's arithmetic on the same numbers, reordered. It runs in
    numpy: on 16-channel vectors a torch call's dispatch (~5-10 us) costs more than the maths,
    and numpy's is several times smaller.
    """

    def __init__(self, head: "PixelCnnHead", n: int, width: int):
        def array(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy()

        # conv (2F, C_in, 1, kw) -> (kw*C_in, 2F), matching a (N, kw, C_in) window flattened
        self.in_weights = [array(conv.weight[:, :, 0].permute(2, 1, 0).flatten(0, 1)) for conv in head.h_convs]
        self.in_biases = [array(conv.bias) for conv in head.h_convs]
        self.out_weights = [(array(out.weight.flatten(1).t()), array(out.bias)) for out in head.h_out]
        _, first, _, last = head.out  # ReLU, 1x1, ReLU, 1x1
        self.final = [(array(first.weight.flatten(1).t()), array(first.bias)), (array(last.weight.flatten(1).t()), array(last.bias))]
        self.kernel_widths = [conv.kernel_size[1] for conv in head.h_convs]
        # layer 0 sees strictly left of a pixel (pad = kw), later layers up to it (pad = kw - 1)
        self.pads = [kw if i == 0 else kw - 1 for i, kw in enumerate(self.kernel_widths)]
        channels = [1] + [head.width] * (head.layers - 1)
        self.buffers = [np.zeros((n, width + pad, c), np.float32) for c, pad in zip(channels, self.pads)]

    def start_row(self, biases: Sequence[torch.Tensor]) -> None:
        """biases: per layer (N, 2F, 1, W), the vertical link plus conditioning for this row."""
        self.columns = [b[:, :, 0].permute(2, 0, 1).float().cpu().numpy() + bias  # (W, N, 2F)
                        for b, bias in zip(biases, self.in_biases)]
        for buffer in self.buffers:
            buffer.fill(0.0)

    def logits(self, j: int) -> np.ndarray:
        """(N, levels) logits at column j; the pixel's value must be `put` before asking for j+1."""
        h = None
        for layer, (weight, (out_weight, out_bias)) in enumerate(zip(self.in_weights, self.out_weights)):
            window = self.buffers[layer][:, j : j + self.kernel_widths[layer]]  # columns j-pad .. j-pad+kw-1
            pre = window.reshape(len(window), -1) @ weight + self.columns[layer][j]
            update = _np_gate(pre) @ out_weight + out_bias
            h = update if h is None else h + update
            if layer + 1 < len(self.buffers):
                self.buffers[layer + 1][:, j + self.pads[layer + 1]] = h
        for weight, bias in self.final:
            h = np.maximum(h, 0.0) @ weight + bias
        return h

    def put(self, j: int, value: np.ndarray) -> None:
        self.buffers[0][:, j + self.pads[0], 0] = value


@torch.no_grad()
def sample_frame(head: PixelCnnHead, cond: torch.Tensor, centres: torch.Tensor, generator: torch.Generator,
                 return_logits: bool = False,
                 force: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample (N, H, W) level indices pixel by pixel in raster order from the head's inputs
    cond (N, D, H, W) and centres (N, PRIOR_CENTRES, H, W).

    Each row's vertical features are computed once from the `rows_above` rows above it; then
    the horizontal stack advances one pixel at a time (see _RowSampler). With `return_logits`,
    also the (N, levels, H, W) logits each pixel was drawn from. With `force` (N, H, W) level
    indices, each pixel is set to the forced level instead of a drawn one: the same path then
    scores a given frame (its logits are the likelihood's, pixel by pixel).
    """
    n, _, height, width = cond.shape
    cond_v, cond_h = (list(map(Tensor.cpu, parts)) for parts in head.condition(cond))
    x = torch.zeros(n, 1, height, width)
    chosen = np.zeros((n, height, width), np.int64)
    noise = gumbel_noise((height, width, n, head.levels), generator, "cpu").numpy() if force is None else None
    forced = force.cpu().numpy() if force is not None else None
    prior, log_weight = (part.permute(2, 3, 0, 1).cpu().numpy() for part in head.prior(cond, centres))  # (H, W, N, .)
    seen = np.zeros((height, width, n, head.levels), np.float32) if return_logits else None
    scale = 2.0 / (head.levels - 1)  # head.embed, in numpy
    row, pixels = _RowSampler(head, n, width), x.numpy()
    cpu_head = head if cond.device.type == "cpu" else copy.deepcopy(head).cpu()
    for i in range(height):
        top = max(0, i - head.rows_above)
        vertical = cpu_head.vertical(x[:, :, top : i + 1], [c[:, :, top : i + 1] for c in cond_v])
        row.start_row(cpu_head.row_biases([v[:, :, -1:] for v in vertical], [c[:, :, i : i + 1] for c in cond_h]))
        for j in range(width):
            logits = np.logaddexp(prior[i, j], log_weight[i, j] + _np_log_softmax(row.logits(j)))
            level = (logits + noise[i, j]).argmax(axis=1) if forced is None else forced[:, i, j]
            value = level * scale - 1.0
            row.put(j, value)
            chosen[:, i, j] = level
            pixels[:, 0, i, j] = value
            if seen is not None:
                seen[i, j] = logits
    logits_seen = torch.from_numpy(seen).permute(2, 3, 0, 1).to(cond.device) if seen is not None else None
    return torch.from_numpy(chosen).to(cond.device), logits_seen


# --- the whole model ---------------------------------------------------------------------


class VideoRnn(nn.Module):
    def __init__(self, config: VideoRnnConfig):
        super().__init__()
        self.config = config
        c, p = config.channels, config.patch
        self.stack = ConvLSTMStack(c * p * p, config.hidden, config.kernel)
        self.to_mean = nn.Conv2d(config.hidden[-1], c * p * p, 1)
        if config.residual:  # an untrained model then predicts "nothing moves", a strong start on video
            nn.init.zeros_(self.to_mean.weight)
            nn.init.zeros_(self.to_mean.bias)
        self.to_cond = nn.Conv2d(config.hidden[-1], config.cond_channels * p * p, 1)
        position = c if c > 1 else 0  # one-hot of a sub-pixel's channel, only when there are several
        head_cond = config.cond_channels + 2 * c + position  # features, mean and previous frame, position
        self.head = PixelCnnHead(head_cond, config.head_width, config.head_layers, config.head_first_kernel,
                                 config.head_kernel, config.levels)

    def step(self, frame: torch.Tensor, state: list | None = None):
        """Read one frame (B, C, H, W), a model frame (model_frames) -> mean of the next frame, top
        features, state."""
        features, state = self.stack.step(F.pixel_unshuffle(frame, self.config.patch), state)
        mean = F.pixel_shuffle(self.to_mean(features), self.config.patch)
        if self.config.residual:
            mean = mean + frame
        return mean, features, state

    def read(self, frames: torch.Tensor, state: list | None = None):
        """Read frames (B, T, C, H, W): the mean after each (the prediction of the frame after it),
        the features after each, and the final state."""
        means, features = [], []
        for t in range(frames.size(1)):
            mean, feat, state = self.step(frames[:, t], state)
            means.append(mean)
            features.append(feat)
        return torch.stack(means, dim=1), torch.stack(features, dim=1), state

    def roll(self, mean: torch.Tensor, state: list, steps: int) -> torch.Tensor:
        """Feed the model its own mean, as a model frame, `steps` times: (B, steps, C, H, W) further means."""
        means = []
        for _ in range(steps):
            mean, _, state = self.step(model_frames(mean, self.config.levels), state)
            means.append(mean)
        return torch.stack(means, dim=1) if means else mean.new_zeros(mean.size(0), 0, *mean.shape[1:])

    def head_inputs(self, features: torch.Tensor, mean: torch.Tensor, previous: torch.Tensor):
        """The head's conditioning map (N, D, H, W*C) and mixture centres (N, 2, H, W*C: the mean,
        the previous frame), in the sub-pixel layout, from the forecaster's features (N, hidden, h,
        w), its mean (N, C, H, W) and the previous frame (N, C, H, W)."""
        c = self.config.channels
        learned = F.pixel_shuffle(self.to_cond(features), self.config.patch)
        mean = mean.clamp(0, 1)
        centres = torch.cat([to_subpixels(mean), to_subpixels(previous)], dim=1)
        per_pixel = torch.cat([learned, mean.to(learned.dtype), previous.to(learned.dtype)], dim=1)
        if c == 1:
            return per_pixel, centres
        n, d, h, w = per_pixel.shape
        spread = per_pixel[..., None].expand(n, d, h, w, c).reshape(n, d, h, w * c)
        position = torch.eye(c, device=spread.device, dtype=spread.dtype).repeat(1, w)  # (C, W*C)
        return torch.cat([spread, position[None, :, None, :].expand(n, c, h, w * c)], dim=1), centres


def head_nll(model: VideoRnn, features: torch.Tensor, means: torch.Tensor, previous: torch.Tensor,
             targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per dimension) of the head on frames (N, C, H, W), teacher-forced:
    the head's inputs are the true pixels."""
    cond, centres = model.head_inputs(features, means, previous)
    labels = to_subpixels(quantize(targets, model.config.levels))
    logits = model.head(model.head.embed(labels), cond, centres)
    return F.cross_entropy(logits.float(), labels[:, 0])


# --- the family --------------------------------------------------------------------------


def augment_clip(clip: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """clip (T, H, W, C); flips: 4 booleans (horizontal, vertical, transpose, reverse time)."""
    if flips[0]:
        clip = clip.flip(2)
    if flips[1]:
        clip = clip.flip(1)
    if flips[2]:
        clip = clip.transpose(1, 2)
    if flips[3]:
        clip = clip.flip(0)
    return clip


AUGMENTATIONS = 4


def cosine_factor(step: int, steps: int, floor: float) -> float:
    progress = min(step / max(steps, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class VideoRnnFamily:
    """Trainer interface (models.trainer.Family) on in-memory uint8 clips (N, T, H, W, C) with
    T >= context_frames + horizon; converted to the config's channels and resolution once."""

    def __init__(self, config: VideoRnnConfig, clips_uint8):
        clips = prepare_clips(clips_uint8, config.channels, config.resolution)
        if clips.shape[1] < config.clip_frames:
            raise ValueError(f"clips have {clips.shape[1]} frames; the config needs {config.clip_frames}")
        if len(clips) < 1:
            raise ValueError("no clips to train on")
        self.config = config
        self.clips = torch.as_tensor(np.array(clips, dtype=np.uint8))  # a copy torch may own
        self.num_items = len(self.clips)
        torch.manual_seed(config.seed)  # the initial weights are part of the run's identity
        self.model = VideoRnn(config)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cosine_factor(step, config.steps, config.min_lr_ratio))

    def modules(self) -> dict[str, nn.Module]:
        return {"video_rnn": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"video_rnn": self.optimizer}

    def schedulers(self) -> dict[str, Any]:
        return {"video_rnn": self.scheduler}

    def to(self, device: torch.device, channels_last: bool) -> None:
        self.model.to(device)  # the convs run on 16x16 maps and 1-row windows: NHWC is not used

    def make_batch(self, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Float clips (B, M+K, C, H, W) in [0, 1], randomly cropped in time and augmented."""
        cfg = self.config
        clips = self.clips[indices.cpu()]
        spare = clips.size(1) - cfg.clip_frames
        starts = torch.randint(0, spare + 1, (len(clips),))
        flips = torch.rand(len(clips), AUGMENTATIONS) < 0.5
        chosen = []
        for clip, start, flip in zip(clips, starts.tolist(), flips):
            clip = clip[start : start + cfg.clip_frames]
            chosen.append(augment_clip(clip, flip) if cfg.augment else clip)
        from models.trainer import to_device  # not at the top: the registered pyfunc ships without trainer's imports

        return to_device(to_float_frames(torch.stack(chosen)), device)

    def train_step(self, batch: torch.Tensor, step: int, autocast) -> dict[str, float]:
        cfg = self.config
        m, k = cfg.context_frames, cfg.horizon
        self.model.train()
        inputs = model_frames(batch, cfg.levels)  # what the model reads; the means' targets stay the true frames
        with autocast():
            one_step, features, state = self.model.read(inputs[:, :m])
            free_means = torch.cat([one_step[:, -1:], self.model.roll(one_step[:, -1], state, k - 1)], dim=1)
            if k > 1:  # the teacher-forced branch continues from the same state
                future_means, future_features, _ = self.model.read(inputs[:, m : m + k - 1], state)
                one_step = torch.cat([one_step, future_means], dim=1)
                features = torch.cat([features, future_features], dim=1)
            # one_step: predictions of frames 1..M+K-1; the last K forecasts are the future's
            nll = self.head_loss(inputs, one_step[:, m - 1 :], features[:, m - 1 :])
        truth = batch[:, 1:]
        mse_free = F.mse_loss(free_means.float(), truth[:, m - 1 :])
        mse_one_step = F.mse_loss(one_step.float(), truth)
        loss = cfg.mse_weight * (mse_free + mse_one_step) + cfg.nll_weight * nll
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        pixels = cfg.channels * cfg.resolution**2
        return {"loss": loss.item(), "mse": mse_free.item(), "mse_per_frame": mse_free.item() * pixels,
                "mse_one_step": mse_one_step.item(), "bits_per_dim": nll.item() / math.log(2.0),
                "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0]}

    def head_loss(self, batch: torch.Tensor, means: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on `head_frames` random future frames per clip of `batch` (model frames).
        means/features (B, K, ...) are the teacher-forced forecasts of future frames 0..K-1."""
        cfg = self.config
        b, m = batch.size(0), cfg.context_frames
        picks = torch.rand(b, cfg.horizon).argsort(dim=1)[:, : cfg.head_frames].to(batch.device)
        rows = torch.arange(b, device=batch.device)[:, None]

        def picked(x: torch.Tensor, offset: int = 0) -> torch.Tensor:  # (B, T, ...) -> (B*n, ...)
            return x[rows, picks + offset].flatten(0, 1)

        return head_nll(self.model, picked(features), picked(means), picked(batch, m - 1), picked(batch, m))


# --- prediction --------------------------------------------------------------------------


def _context_tensor(model: VideoRnn, context) -> tuple[torch.Tensor, int, bool]:
    """uint8 (M,H,W,C), (B,M,H,W,C) or (M,H,W) -> model frames (B, M, C, H, W) at the model's
    channels and resolution, the input's channel count, and whether the input was a single clip."""
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
    frames = _float_clips(model, prepare_clips(context, cfg.channels, cfg.resolution))
    return model_frames(frames, cfg.levels), context.shape[-1], single


def _float_clips(model: VideoRnn, clips_uint8: np.ndarray) -> torch.Tensor:
    """Prepared uint8 clips (N, T, H, W, C) -> float (N, T, C, H, W) in [0, 1] on the model's device."""
    device = next(model.parameters()).device
    return to_float_frames(torch.as_tensor(np.array(clips_uint8))).to(device)


def _roll_means(model: VideoRnn, context: torch.Tensor, horizon: int) -> torch.Tensor:
    """"mean" mode: the forecaster's clamped means (B, horizon, C, H, W) after the context (model
    frames), each fed back as a model frame."""
    means, _, state = model.read(context)
    first = means[:, -1:].clamp(0, 1)
    return torch.cat([first, model.roll(first[:, 0], state, horizon - 1).clamp(0, 1)], dim=1)


def _draw_frames(model: VideoRnn, context: torch.Tensor, horizon: int, generator: torch.Generator,
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
        future, _ = _draw_frames(model, frames, horizon, torch.Generator().manual_seed(int(seed)))
    result = match_channels(to_uint8_frames(future), in_channels)
    return result[0] if single else result


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
        frames = model_frames(_float_clips(model, clips[start : start + chunk]), cfg.levels)
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
    frames = model_frames(_float_clips(model, clips), cfg.levels)
    _, logits = _draw_frames(model, frames[:, :m], k, torch.Generator(), teacher=frames[:, m:])
    labels = to_subpixels(quantize(frames[:, m:].flatten(0, 1), cfg.levels))[:, 0]  # (B*K, H, W*C)
    nll = F.cross_entropy(logits.flatten(0, 1).float(), labels)
    return nll.item() / math.log(2.0)


# --- data --------------------------------------------------------------------------------


def load_clips(manifest_path: str | Path) -> dict:
    """Train and held-out clips (N, T, H, W, C) uint8 from a video shard manifest (split by
    source file), with each clip's source path ("train_sources", "heldout_sources")."""
    from corpora.ingest import shard_paths  # training side only: the pyfunc has no corpora/
    from corpora.shards import read_shards, tensors_from_table

    table = read_shards(shard_paths(Path(manifest_path), "clips"), columns=["frames", "split", "source_path"])
    frames = tensors_from_table(table, "frames")
    split = np.asarray(table.column("split").to_pylist())
    sources = np.asarray(table.column("source_path").to_pylist(), dtype=object)
    out = {}
    for name in ("train", "heldout"):
        out[name] = frames[split == name]
        out[f"{name}_sources"] = [str(s) for s in sources[split == name]]
    return out


# --- export for the registry -------------------------------------------------------------


def export_bundle(family: VideoRnnFamily, step: int | None = None) -> dict:
    """What a registered model needs, as tensors and plain values (torch.load(weights_only=True))."""
    state = {k: v.detach().cpu() for k, v in family.model.state_dict().items()}
    return {"format": BUNDLE_FORMAT, "config": family.config.to_dict(), "state_dict": state, "step": step}


def save_bundle(bundle: dict, path: str | Path) -> Path:
    from corpora.atomic import atomic_write  # training side only; the pyfunc never writes

    return atomic_write(path, lambda file: torch.save(bundle, file))


def load_bundle(path: str | Path, formats: Sequence[str] = (BUNDLE_FORMAT,)) -> dict:
    """A bundle of one of `formats` (by default only the current one: an older format's model read
    other inputs, so it would not be the model it was measured as)."""
    bundle = torch.load(path, map_location="cpu", weights_only=True)
    if bundle.get("format") not in formats:
        raise ValueError(f"not a video RNN bundle of format {' or '.join(formats)}: format {bundle.get('format')!r}")
    return bundle


def load_model(bundle: dict | str | Path) -> VideoRnn:
    """The bundle's model on CPU, in eval mode."""
    if not isinstance(bundle, dict):
        bundle = load_bundle(bundle)
    model = VideoRnn(VideoRnnConfig.from_dict(bundle["config"]))
    model.load_state_dict(bundle["state_dict"])
    return model.eval()


# --- command line: `python -m models.video_rnn --run-dir runs/x` -----------------------------


def main(argv: Sequence[str] | None = None) -> dict:
    """Train on the clips of a video shard manifest into a run folder (resuming if it holds
    checkpoints), write bundle.pt and print the held-out report against copy-last-frame."""
    parser = argparse.ArgumentParser(prog="python -m models.video_rnn", description=main.__doc__)
    parser.add_argument("--manifest", type=Path, default=Path("data/shards/video/manifest.json"))
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    parser.add_argument("--channels", type=int, choices=[1, 3])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--max-seconds", type=float)
    # 2 threads are ~1.5x faster than 1 on two free cores, and 5-20x slower when another
    # multi-threaded job shares them (measured): pass 1 on a busy machine
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out report")
    args = parser.parse_args(argv)

    from models import video_metrics
    from models.trainer import fit

    torch.set_num_threads(args.threads)
    data = load_clips(args.manifest)
    overrides = {key: value for key, value in dict(channels=args.channels, steps=args.steps, batch_size=args.batch_size,
                                                   seed=args.seed).items() if value is not None}
    config = VideoRnnConfig.profile(args.profile, **overrides)
    family = VideoRnnFamily(config, data["train"])

    def log(step: int, metrics: dict) -> None:
        print(json.dumps({"step": step, **{k: round(v, 5) for k, v in metrics.items()}}), file=sys.stderr, flush=True)

    trainer_overrides = {k: v for k, v in dict(max_seconds=args.max_seconds, bf16=args.bf16).items() if v is not None}
    result = fit(family, config.trainer_config(**trainer_overrides), args.run_dir, torch.device(args.device), log=log,
                 checkpoint_extra={"family": "video_rnn", "config": config.to_dict()})
    save_bundle(export_bundle(family, result.step), args.run_dir / "bundle.pt")
    summary = {"step": result.step, "finished": result.finished, "resumed_from": result.resumed_from,
               "seconds": round(result.seconds, 1), "bf16": result.bf16, "train_clips": len(data["train"]),
               "heldout_clips": len(data["heldout"])}
    report = None
    if not args.no_eval and len(data["heldout"]):
        family.model.cpu()
        report = video_metrics.evaluate(family.model, data["heldout"])
        print(video_metrics.format_table(report), flush=True)
    print(json.dumps(summary), flush=True)
    return {**summary, "report": report}



# --- the shared entry point's run (python -m models.train --family video-rnn) ----------------

# Lowest mean MSE would reward blur (a blurred forecast lowers squared error while SSIM falls below
# copy-last's), so the score weighs both against copy-last-frame (video_metrics.score_by_horizon)
# and the mean SSIM may not fall more than 0.02 below the champion's.
CHAMPION_RULE = ChampionRule("score_vs_copy_last", higher_is_better=False,
                             guards=(Guard("heldout_ssim", higher_is_better=True, tolerance=0.02),))
CHAMPION_METRIC = CHAMPION_RULE.metric


def run_training(request, run):
    """Train on the manifest's training clips, then compare with copy-last-frame on the held-out ones."""
    from models import video_metrics
    from models.train import TrainingOutcome

    clips = load_clips(run.manifest)
    if len(clips["train"]) == 0 or len(clips["heldout"]) == 0:
        raise ValueError(f"the video corpus has {len(clips['train'])} train and {len(clips['heldout'])} held-out "
                         "clips; both are needed (raise video_corpus's heldout_percent, or add videos)")
    config = VideoRnnConfig.from_dict(request.model_config)
    family = VideoRnnFamily(config, clips["train"])
    if request.init_from:  # an older format's weights are a start, though they read 8-bit frames
        family.model.load_state_dict(load_model(load_bundle(request.init_from, WARM_START_FORMATS)).state_dict())
        run.report.log(f"starting from the weights in {request.init_from}")
    result = run.fit(family, config, request)
    if not run.distributed.is_main:
        return None
    bundle = save_bundle(export_bundle(family, step=result.step), run.run_dir / "bundle.pt")
    report = video_metrics.evaluate(load_model(bundle), clips["heldout"])
    summary = {  # every number CHAMPION_RULE reads, and the rest of the mean row of the table
        CHAMPION_METRIC: report["score_vs_copy_last"],
        "heldout_mse": report["model_mean"]["mse"], "heldout_ssim": report["model_mean"]["ssim"],
        "heldout_psnr": report["model_mean"]["psnr"], "baseline_mse": report["baseline_mean"]["mse"],
        "baseline_ssim": report["baseline_mean"]["ssim"], "baseline_psnr": report["baseline_mean"]["psnr"],
        "bits_per_dim": report["bits_per_dim"] if report["bits_per_dim"] is not None else float("nan"),
    }
    return TrainingOutcome(
        bundle=str(bundle), checkpoint=str(result.checkpoint), step=result.step, resumed_from=result.resumed_from,
        train_seconds=result.seconds, score=summary[CHAMPION_METRIC], summary=summary,
        report_markdown=video_metrics.format_table(report),
        details={"heldout_clips": report["clips"], "beats_baseline_at": report["beats_baseline_at"],
                 "score_vs_copy_last_by_horizon": report["score_by_horizon"],
                 "beats_baseline_at_every_horizon": len(report["beats_baseline_at"]) == len(report["horizons"]),
                 "mse_below_baseline_at": report["mse_below_baseline_at"]},
    )


if __name__ == "__main__":
    main()
