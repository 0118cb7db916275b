"""Painting GAN family: a small StyleGAN2 (Karras et al. 2020) trained on random crops.

Generator (StyleGAN2 config-e "skip" generator, narrowed):
- a mapping network z -> w: z is normalized to the unit sphere, then `mapping_layers`
  fully-connected layers whose learning rate is `mapping_lr_mult` (0.01 in the paper) of the rest;
- a learned constant 4x4 input and, per doubling, two 3x3 *modulated and demodulated*
  convolutions (`modulated_conv2d`: w's per-layer affine "style" scales the input channels of
  the kernel; demodulation rescales each output channel's kernel to unit norm, replacing
  StyleGAN1's AdaIN, whose normalization of feature maps caused droplet artifacts), the first
  after a bilinear 2x upsample;
- per-layer noise with a learned per-channel strength, and skip-style toRGB outputs (1x1
  modulated convs without demodulation) summed over the upsampled resolutions.
Every layer uses the equalized learning rate of Karras et al. 2018 (weights stored N(0,1),
scaled by 1/sqrt(fan_in) at run time), which is what makes StyleGAN's Adam(2e-3, betas 0/0.99)
work for all layers alike.

Discriminator: StyleGAN2's residual D (two 3x3 convs and a 1x1 skip per halving, summed
with 1/sqrt(2)), average pooling to halve (cheaper than conv-then-blur on CPU), then
minibatch standard deviation, a 3x3 conv and two dense layers at 4x4.

Training: non-saturating logistic loss; lazy R1 on reals (gamma/2 * |grad D|^2 every
`r1_every` D steps, scaled by r1_every, with D's Adam lr and betas adjusted by
r1_every/(r1_every+1) as in the paper); style mixing (with `style_mixing_prob` the w of a
second z takes over from a random layer on); an EMA generator; a running mean of w
(`mapping.w_avg`, a buffer, so it travels in every checkpoint and bundle) for truncation
w' = w_avg + psi (w - w_avg) at sampling. Not implemented: path-length regularization, lazy or
not, and the paper's FIR-filtered resampling (bilinear up, average-pool down instead).

Small data: the painting corpus is 13 pictures. Each batch is freshly cut from them (random
crop side in `crop_scale` of the picture's short side, random position and horizontal flip,
resized to `resolution` with antialiasing), drawn from torch's global RNG so a resumed run
sees the same crops. DiffAugment (Zhao et al. 2020: color, translation, cutout) is applied
to real and fake images alike in D's and G's steps; it is differentiable, so G learns the
un-augmented distribution.

Sampling uses the EMA generator with the fixed per-layer noise maps stored in the model
(`noise_mode="const"`, as StyleGAN2's generate.py), so an image depends only on its w's:
`style_mix(g, a, b, 0)` is exactly `sample(g, 1, seed=b)`.

This module is imported by the registered pyfunc in a process that has only models/ on
its path: it must not import corpora/, dagster, or models.trainer at module level.
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
from torch import nn

from models.champion import ChampionRule
from models.family_config import FamilyConfig
from models.image_gan import EMA_WARMUP, latents, to_uint8, to_unit_range, update_ema

BUNDLE_FORMAT = "atelier.painting_gan/1"
LEAKY_SLOPE = 0.2
ACTIVATION_GAIN = math.sqrt(2)  # keeps the activations' scale through leaky ReLU (StyleGAN's def_gain)
DEMODULATION_EPS = 1e-8
Z_NORMALIZE_EPS = 1e-8
W_AVG_BETA = 0.995  # the paper's decay of the tracked mean of w
MBSTD_GROUP = 4  # minibatch-stddev group size (StyleGAN2's default)
MBSTD_EPS = 1e-8
RESIDUAL_SCALE = 1 / math.sqrt(2)  # the residual D's skip + main sum keeps unit variance
TRANSLATION_RATIO, CUTOUT_RATIO = 0.125, 0.5  # DiffAugment's defaults
FLIP_PROBABILITY = 0.5
SAMPLE_CHUNK = 64  # images per forward pass when sampling, to bound memory
GRID_GAP, GRID_BACKGROUND = 2, 255  # pixels between grid cells, and their (white) value
MIN_RESOLUTION = 8
BASE_RESOLUTION = 4  # the learned constant's size; D ends at it too
AUGMENTATIONS = ("color", "translation", "cutout")
DEFAULT_CROP_SCALE = (0.3, 1.0)


# --- configuration -----------------------------------------------------------------------


@dataclass
class PaintingGanConfig(FamilyConfig):
    resolution: int = 32  # power of two >= 8
    channels: int = 3
    z_dim: int = 64
    w_dim: int = 64
    mapping_layers: int = 4  # the paper has 8; 4 is enough at this scale and halves its cost
    mapping_lr_mult: float = 0.01
    widths: tuple[int, ...] = (128, 128, 64, 32)  # channels per resolution stage, 4x4 first; D mirrors them
    r1_gamma: float = 0.05
    r1_every: int = 16  # lazy regularization interval, in D steps
    style_mixing_prob: float = 0.9
    diffaugment: str = "color,translation,cutout"  # comma-separated subset of AUGMENTATIONS; "" for none
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE  # crop side as a fraction of the picture's short side
    ema_decay: float = 0.999
    lr: float = 2e-3
    betas: tuple[float, float] = (0.0, 0.99)
    batch_size: int = 16
    steps: int = 1500
    seed: int = 0

    def __post_init__(self):
        self.widths, self.betas, self.crop_scale = tuple(self.widths), tuple(self.betas), tuple(self.crop_scale)
        stages = math.log2(self.resolution) - 1 if self.resolution >= MIN_RESOLUTION else -1
        if stages != int(stages) or stages < 2:
            raise ValueError(f"resolution must be a power of two >= {MIN_RESOLUTION}, not {self.resolution}")
        if len(self.widths) != int(stages):
            raise ValueError(f"resolution {self.resolution} needs {int(stages)} widths (4x4 stage first), got {self.widths}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, not {self.crop_scale}")
        unknown = set(augmentation_names(self.diffaugment)) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown DiffAugment policies {sorted(unknown)}; known: {AUGMENTATIONS}")
        if not 0 <= self.style_mixing_prob <= 1 or self.r1_every < 1:
            raise ValueError("style_mixing_prob must lie in [0, 1] and r1_every be >= 1")

    @classmethod
    def profile(cls, name: str, **overrides) -> "PaintingGanConfig":
        return cls(**{**PROFILES[name], **overrides})


PROFILES: dict[str, dict] = {
    # 32x32: 0.15-0.17 s a step on 2 cores at load ~2.4 (best of 5, bf16 autocast on this AMX CPU), so ~4 minutes
    # for 1500 steps. A full CLI run took 38 minutes at load 2.4-4.1 (other jobs on the 2 cores; 1 thread was then
    # 5-10x faster than 2). Samples are colour textures of the crops, not yet objects (kid_style_random_cnn ~0.5).
    "demo": dict(resolution=32, widths=(128, 128, 64, 32), z_dim=64, w_dim=64, batch_size=16, steps=1500),
    # twice the 4x4 width and the batch, 2.7x the steps: ~0.3 s a step (0.15 for demo), about 20 minutes on 2 cores
    "cpu-long": dict(resolution=32, widths=(256, 128, 64, 32), z_dim=128, w_dim=128, batch_size=32, steps=4000),
    # 128x128 (the corpus' size, so crops are downscaled at most, never upscaled), config-e-like widths
    "gpu": dict(resolution=128, widths=(512, 512, 512, 256, 128, 64), z_dim=512, w_dim=512, mapping_layers=8,
                crop_scale=(0.5, 1.0), r1_gamma=0.2, batch_size=32, steps=25000),
}


def augmentation_names(policy: str) -> list[str]:
    return [name.strip() for name in policy.split(",") if name.strip()]


# --- layers ------------------------------------------------------------------------------


def activate(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE) * ACTIVATION_GAIN


class EqualLinear(nn.Module):
    """Dense layer with the equalized learning rate: the stored weight is N(0, 1/lr_mul^2) and
    scaled by lr_mul/sqrt(fan_in) at run time, so lr_mul scales this layer's effective Adam step."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.weight_gain, self.bias_gain, self.activation = lr_mul / math.sqrt(in_dim), lr_mul, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return activate(x) if self.activation else x


class EqualConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, activation: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.gain, self.padding, self.activation = 1 / math.sqrt(in_channels * kernel * kernel), kernel // 2, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.gain, self.bias, padding=self.padding)
        return activate(x) if self.activation else x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     padding: int = 0, fused: bool = True) -> torch.Tensor:
    """StyleGAN2's weight (de)modulation: sample i is convolved with weight * styles[i] (per
    input channel), each output channel's kernel then rescaled to unit L2 norm when
    `demodulate`, so unit-variance inputs give unit-variance outputs whatever the style.

    x (N, Cin, H, W), weight (Cout, Cin, k, k), styles (N, Cin). `fused`: the N per-sample
    kernels run as one grouped convolution (groups=N) over the batch folded into channels.
    Otherwise the same product is computed as StyleGAN2-ADA does while training: scale the
    input channels, one convolution with the shared weight, scale the output channels (the
    demodulation factor does not depend on the pixel). The layers use the grouped form for
    sampling and the other in training, where it measured 0.29 s a demo step against 0.64 s
    (2 busy CPU cores, best of 8).
    """
    batch, in_channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    if not fused:
        x = F.conv2d(x * styles[:, :, None, None], weight, padding=padding)
        if demodulate:  # 1/|w_o * s| for each sample and output channel o
            x = x * torch.rsqrt(styles.square() @ weight.square().sum(dim=(2, 3)).t() + DEMODULATION_EPS)[:, :, None, None]
        return x
    kernels = weight[None] * styles[:, None, :, None, None]  # (N, Cout, Cin, k, k)
    if demodulate:
        kernels = kernels * torch.rsqrt(kernels.square().sum(dim=(2, 3, 4), keepdim=True) + DEMODULATION_EPS)
    out = F.conv2d(x.reshape(1, batch * in_channels, height, width),
                   kernels.reshape(batch * out_channels, in_channels, kh, kw), padding=padding, groups=batch)
    return out.reshape(batch, out_channels, out.shape[2], out.shape[3])


class SynthesisLayer(nn.Module):
    """[bilinear 2x up], modulated 3x3 conv, noise with a learned per-channel strength, bias, lrelu."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool, kernel: int = 3):
        super().__init__()
        self.up, self.padding = up, kernel // 2
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)  # styles start at 1: the plain conv
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros(out_channels))
        # the fixed noise map sampling uses; drawn at construction, so part of the model's identity
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = modulated_conv2d(x, self.weight, self.affine(w), demodulate=True, padding=self.padding, fused=not self.training)
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        elif noise_mode == "const":
            noise = self.noise_const.to(x.dtype)
        elif noise_mode == "none":
            noise = None
        else:
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', not {noise_mode!r}")
        if noise is not None:
            x = x + noise * self.noise_strength[None, :, None, None].to(x.dtype)
        return activate(x + self.bias[None, :, None, None].to(x.dtype))


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation: its output is colour, whose scale matters."""

    def __init__(self, in_channels: int, channels: int, w_dim: int):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w) * self.gain, demodulate=False, fused=not self.training)
        return x + self.bias[None, :, None, None].to(x.dtype)


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, channels: int, w_dim: int, resolution: int):
        super().__init__()
        self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, up=False)
        self.torgb = ToRGB(out_channels, channels, w_dim)


class MappingNetwork(nn.Module):
    def __init__(self, config: PaintingGanConfig):
        super().__init__()
        dims = [config.z_dim] + [config.w_dim] * config.mapping_layers
        self.net = nn.Sequential(*[EqualLinear(a, b, lr_mul=config.mapping_lr_mult, activation=True) for a, b in zip(dims, dims[1:])])
        self.register_buffer("w_avg", torch.zeros(config.w_dim))

    def forward(self, z: torch.Tensor, track_w_avg: bool = False) -> torch.Tensor:
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + Z_NORMALIZE_EPS)
        w = self.net(z)
        if track_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, W_AVG_BETA))
        return w


class Generator(nn.Module):
    def __init__(self, config: PaintingGanConfig):
        super().__init__()
        self.z_dim, self.w_dim = config.z_dim, config.w_dim
        self.resolution, self.channels = config.resolution, config.channels
        self.crop_scale = tuple(config.crop_scale)  # metrics compare samples with crops of this scale
        widths = config.widths
        self.mapping = MappingNetwork(config)
        self.const = nn.Parameter(torch.randn(widths[0], BASE_RESOLUTION, BASE_RESOLUTION))
        self.conv = SynthesisLayer(widths[0], widths[0], config.w_dim, BASE_RESOLUTION, up=False)
        self.torgb = ToRGB(widths[0], config.channels, config.w_dim)
        self.blocks = nn.ModuleList(
            SynthesisBlock(a, b, config.channels, config.w_dim, BASE_RESOLUTION * 2 ** (i + 1))
            for i, (a, b) in enumerate(zip(widths, widths[1:]))
        )
        # one w per conv layer, each toRGB sharing the w of the next block's first conv (as StyleGAN2)
        self.num_ws = 2 + 2 * len(self.blocks)

    def styles(self, z: torch.Tensor, truncation_psi: float = 1.0, track_w_avg: bool = False) -> torch.Tensor:
        """z (N, z_dim) -> ws (N, num_ws, w_dim), the same w at every layer, truncated toward w_avg."""
        w = self.mapping(z, track_w_avg=track_w_avg)
        if truncation_psi != 1:
            w = self.mapping.w_avg.to(w.dtype).lerp(w, truncation_psi)
        return w[:, None, :].expand(-1, self.num_ws, -1)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        x = self.const[None].expand(ws.shape[0], -1, -1, -1).to(ws.dtype)
        x = self.conv(x, ws[:, 0], noise_mode)
        image = self.torgb(x, ws[:, 1])
        for index, block in enumerate(self.blocks):
            first = 1 + 2 * index
            x = block.conv0(x, ws[:, first], noise_mode)
            x = block.conv1(x, ws[:, first + 1], noise_mode)
            image = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False) + block.torgb(x, ws[:, first + 2])
        return image

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "random") -> torch.Tensor:
        return self.synthesis(self.styles(z, truncation_psi), noise_mode)


def minibatch_stddev(x: torch.Tensor, group_size: int = MBSTD_GROUP) -> torch.Tensor:
    """Append the mean standard deviation over groups of samples as one feature map, so D can
    see a batch with too little variety (Karras et al. 2018)."""
    n, c, h, w = x.shape
    group = min(group_size, n)
    while n % group:  # the largest group size that divides the batch
        group -= 1
    y = x.float().reshape(group, -1, c, h, w)  # sample i is in group i % (n / group)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(MBSTD_EPS).sqrt().mean(dim=(1, 2, 3))
    y = y.reshape(-1, 1, 1, 1).repeat(group, 1, h, w).to(x.dtype)
    return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(F.avg_pool2d(x, 2))
        x = self.conv1(F.avg_pool2d(self.conv0(x), 2))
        return (skip + x) * RESIDUAL_SCALE


class Discriminator(nn.Module):
    def __init__(self, config: PaintingGanConfig):
        super().__init__()
        widths = config.widths[::-1]  # full resolution first, 4x4 last
        self.fromrgb = EqualConv2d(config.channels, widths[0], 1)
        self.blocks = nn.Sequential(*[DiscriminatorBlock(a, b) for a, b in zip(widths, widths[1:])])
        last = widths[-1]
        self.conv = EqualConv2d(last + 1, last, 3)
        self.dense = EqualLinear(last * BASE_RESOLUTION ** 2, last, activation=True)
        self.out = EqualLinear(last, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.fromrgb(x))
        x = self.conv(minibatch_stddev(x))
        return self.out(self.dense(x.flatten(1))).flatten()


# --- data: random crops and DiffAugment --------------------------------------------------


def pictures_tensor(pictures) -> torch.Tensor:
    """uint8 (N, H, W, C) pictures -> float (N, C, H, W) in [-1, 1], copied (the input may be a
    read-only Parquet buffer)."""
    pictures = np.asarray(pictures)
    if pictures.dtype != np.uint8 or pictures.ndim != 4:
        raise ValueError(f"pictures must be uint8 (N, H, W, C), got {pictures.dtype} {pictures.shape}")
    return to_unit_range(torch.tensor(pictures))


def crop_batch(pictures: torch.Tensor, which: torch.Tensor, resolution: int, scale: tuple[float, float],
               generator: torch.Generator | None = None) -> torch.Tensor:
    """One random square crop of each pictures[which[i]]: side uniform in `scale` x the short
    side (never below `resolution`, so crops are not upscaled where the picture allows),
    random position, flipped with probability 1/2, resized to resolution x resolution.
    Randomness comes from `generator` (None: torch's global RNG, which the trainer restores)."""
    low, high = scale
    crops = []
    for index in which.tolist():
        picture = pictures[index]
        height, width = picture.shape[1:]
        short = min(height, width)
        fraction = low + (high - low) * torch.rand((), generator=generator).item()
        side = min(short, max(round(fraction * short), resolution))
        top = int(torch.randint(0, height - side + 1, (), generator=generator))
        left = int(torch.randint(0, width - side + 1, (), generator=generator))
        crop = picture[:, top : top + side, left : left + side]
        if torch.rand((), generator=generator).item() < FLIP_PROBABILITY:
            crop = crop.flip(-1)
        crops.append(F.interpolate(crop[None], size=(resolution, resolution), mode="bilinear",
                                   align_corners=False, antialias=side > resolution))
    return torch.cat(crops)


def random_crops(pictures, n: int, resolution: int, seed: int = 0, scale: tuple[float, float] = DEFAULT_CROP_SCALE) -> np.ndarray:
    """n random crops (pictures chosen uniformly) as uint8 (n, resolution, resolution, C);
    the same seed gives the same crops. Used as the real reference of the metrics."""
    generator = torch.Generator().manual_seed(int(seed))
    tensor = pictures_tensor(pictures)
    which = torch.randint(0, len(tensor), (n,), generator=generator)
    return to_uint8(crop_batch(tensor, which, resolution, scale, generator)) if n else np.zeros((0, resolution, resolution, tensor.shape[1]), np.uint8)


def _uniform(n: int, x: torch.Tensor) -> torch.Tensor:
    # drawn on the CPU generator, so the random stream is the same on any device
    return torch.rand(n, 1, 1, 1).to(x.device, x.dtype)


def augment_color(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    x = x + (_uniform(n, x) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(n, x) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(n, x) + 0.5) + mean  # contrast


def augment_translation(x: torch.Tensor, ratio: float = TRANSLATION_RATIO) -> torch.Tensor:
    """Shift each image by up to ratio x its size, filling with zeros (by index gather, so the
    gradient flows to the pixels that stay in view)."""
    n, _, h, w = x.shape
    shift_y, shift_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-shift_y, shift_y + 1, (n, 1, 1)).to(x.device)
    tx = torch.randint(-shift_x, shift_x + 1, (n, 1, 1)).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :, None] + ty + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device)[None, None, :] + tx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # the zero border is what clamped indices read
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def augment_cutout(x: torch.Tensor, ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Zero one square of ratio x the image size per image, at a random centre."""
    n, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - size_y % 2), (n, 1, 1)).to(x.device)
    ox = torch.randint(0, w + (1 - size_x % 2), (n, 1, 1)).to(x.device)
    rows = (torch.arange(size_y, device=x.device)[None, :, None] + oy - size_y // 2).clamp(0, h - 1)
    cols = (torch.arange(size_x, device=x.device)[None, None, :] + ox - size_x // 2).clamp(0, w - 1)
    mask = torch.ones(n, h, w, device=x.device, dtype=x.dtype)
    mask[torch.arange(n, device=x.device)[:, None, None], rows, cols] = 0
    return x * mask[:, None]


AUGMENT = {"color": augment_color, "translation": augment_translation, "cutout": augment_cutout}


def diff_augment(x: torch.Tensor, policy: str) -> torch.Tensor:
    for name in augmentation_names(policy):
        x = AUGMENT[name](x)
    return x


# --- the family --------------------------------------------------------------------------


class PaintingGanFamily:
    """Trainer interface (models.trainer.Family) for the painting GAN. An item is a picture;
    a batch is one fresh random crop of each drawn picture."""

    def __init__(self, config: PaintingGanConfig, pictures_uint8):
        self.config = config
        self.pictures = pictures_tensor(pictures_uint8)
        if len(self.pictures) == 0 or self.pictures.shape[1] != config.channels:
            raise ValueError(f"need at least one picture with {config.channels} channels, got {tuple(self.pictures.shape)}")
        self.num_items = len(self.pictures)

        torch.manual_seed(config.seed)  # the initial weights and noise maps are part of the run's identity
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
        self.ema_generator = copy.deepcopy(self.generator).requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=config.betas)
        # lazy R1 makes one D "step" r1_every/(r1_every+1) of a step: Karras et al. 2020, Appendix B
        ratio = config.r1_every / (config.r1_every + 1)
        d_betas = tuple(beta ** ratio for beta in config.betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr * ratio, betas=d_betas)
        self.channels_last = False

    # the trainer interface
    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator, "ema_generator": self.ema_generator}

    def compiled_modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}  # the R1 penalty differentiates the discriminator twice

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def schedulers(self) -> dict[str, Any]:
        return {}

    def to(self, device: torch.device, channels_last: bool) -> None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for module in self.modules().values():
            module.to(device=device, memory_format=fmt)
        self.channels_last = channels_last
        self.pictures = self.pictures.to(device)

    def make_batch(self, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        real = crop_batch(self.pictures, indices, self.config.resolution, self.config.crop_scale).to(device)
        return real.contiguous(memory_format=torch.channels_last) if self.channels_last else real

    def _training_styles(self, n: int, device: torch.device, track_w_avg: bool) -> torch.Tensor:
        """ws for n fresh z; with style_mixing_prob, a second z's w from a random layer on."""
        cfg = self.config
        ws = self.generator.styles(torch.randn(n, cfg.z_dim, device=device), track_w_avg=track_w_avg)
        if torch.rand(()).item() < cfg.style_mixing_prob:
            crossover = int(torch.randint(1, self.generator.num_ws, ()))
            mixed = self.generator.styles(torch.randn(n, cfg.z_dim, device=device))
            ws = torch.cat([ws[:, :crossover], mixed[:, crossover:]], dim=1)
        return ws

    def _score(self, images: torch.Tensor, autocast) -> torch.Tensor:
        with autocast():
            return self.discriminator(diff_augment(images, self.config.diffaugment)).float()

    def _r1_penalty(self, real: torch.Tensor) -> torch.Tensor:
        # in float32, outside autocast: a squared gradient norm is too small for bf16
        real = real.detach().float().requires_grad_(True)
        scores = self.discriminator(diff_augment(real, self.config.diffaugment))
        (grad,) = torch.autograd.grad(scores.sum(), real, create_graph=True)
        return grad.square().sum(dim=(1, 2, 3)).mean()

    def train_step(self, batch: torch.Tensor, step: int, autocast) -> dict[str, float]:
        cfg, real = self.config, batch
        n, metrics = real.shape[0], {}

        # D: real up, fake down (non-saturating logistic loss)
        self.discriminator.requires_grad_(True)
        with torch.no_grad(), autocast():
            fake = self.generator.synthesis(self._training_styles(n, real.device, track_w_avg=False))
        d_real, d_fake = self._score(real, autocast), self._score(fake, autocast)
        d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        metrics.update(d_loss=d_loss.item(), d_real_sign=d_real.sign().mean().item())  # ADA's overfitting signal

        if cfg.r1_gamma > 0 and step % cfg.r1_every == 0:
            r1 = self._r1_penalty(real)
            self.opt_d.zero_grad(set_to_none=True)
            (r1 * (cfg.r1_gamma / 2) * cfg.r1_every).backward()
            self.opt_d.step()
            metrics["r1"] = r1.item()

        # G: make D call the (augmented) fakes real
        self.discriminator.requires_grad_(False)  # no D gradients to compute in G's step
        with autocast():
            fake = self.generator.synthesis(self._training_styles(n, real.device, track_w_avg=True))
        g_loss = F.softplus(-self._score(fake, autocast)).mean()
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self.discriminator.requires_grad_(True)
        update_ema(self.ema_generator, self.generator, min(cfg.ema_decay, (1 + step) / (EMA_WARMUP + step)))
        metrics["g_loss"] = g_loss.item()
        return metrics

    def sampling_generator(self) -> Generator:
        """A CPU copy of the EMA generator (w_avg and the noise maps come with its buffers)."""
        return copy.deepcopy(self.ema_generator).to("cpu", memory_format=torch.contiguous_format).eval()


# --- sampling ----------------------------------------------------------------------------


def num_style_layers(generator: Generator) -> int:
    """How many w's one image takes (the crossover range of style mixing is 0..this)."""
    return generator.num_ws


def _device_of(generator: Generator) -> torch.device:
    return next(generator.parameters()).device


def _seed_styles(generator: Generator, seeds: Sequence[int], truncation_psi: float) -> torch.Tensor:
    """ws of one image per seed, each seed's z exactly as `sample(generator, 1, seed)` draws it."""
    z = torch.cat([latents(1, generator.z_dim, seed) for seed in seeds]).to(_device_of(generator))
    return generator.styles(z, truncation_psi)


def _render(generator: Generator, ws: torch.Tensor) -> np.ndarray:
    chunks = [to_uint8(generator.synthesis(ws[i : i + SAMPLE_CHUNK], noise_mode="const")) for i in range(0, len(ws), SAMPLE_CHUNK)]
    return np.concatenate(chunks) if chunks else np.zeros((0, generator.resolution, generator.resolution, generator.channels), np.uint8)


@torch.no_grad()
def sample(generator: Generator, n: int, seed: int = 0, truncation_psi: float = 1.0) -> np.ndarray:
    """n images as uint8 (n, H, W, C); the same seed and psi always give the same images."""
    generator.eval()
    z = latents(n, generator.z_dim, seed).to(_device_of(generator))
    return _render(generator, generator.styles(z, truncation_psi))


def _mix(ws_a: torch.Tensor, ws_b: torch.Tensor, crossover: int) -> torch.Tensor:
    if not 0 <= crossover <= ws_a.shape[1]:
        raise ValueError(f"crossover must lie in 0..{ws_a.shape[1]}, not {crossover}")
    return torch.cat([ws_a[:, :crossover], ws_b[:, crossover:]], dim=1)


@torch.no_grad()
def style_mix(generator: Generator, seed_a: int, seed_b: int, crossover: int, truncation_psi: float = 1.0) -> np.ndarray:
    """One image (1, H, W, C): the coarse styles (layers < crossover) of seed_a, the fine ones
    of seed_b. crossover 0 is sample(generator, 1, seed_b); num_style_layers is seed_a's."""
    generator.eval()
    ws_a, ws_b = _seed_styles(generator, [seed_a, seed_b], truncation_psi).split(1)
    return _render(generator, _mix(ws_a, ws_b, int(crossover)))


def image_grid(rows: Sequence[Sequence[np.ndarray | None]], gap: int = GRID_GAP, background: int = GRID_BACKGROUND) -> np.ndarray:
    """Cells (H, W, C) uint8 of equal size, None for an empty cell, as one uint8 image."""
    cell = next(image for row in rows for image in row if image is not None)
    h, w, c = cell.shape
    cols = max(len(row) for row in rows)
    grid = np.full((len(rows) * (h + gap) - gap, cols * (w + gap) - gap, c), background, np.uint8)
    for r, row in enumerate(rows):
        for col, image in enumerate(row):
            if image is not None:
                grid[r * (h + gap) : r * (h + gap) + h, col * (w + gap) : col * (w + gap) + w] = image
    return grid


@torch.no_grad()
def style_mixing_grid(generator: Generator, row_seeds: Sequence[int], col_seeds: Sequence[int], crossover: int,
                      truncation_psi: float = 1.0) -> np.ndarray:
    """The StyleGAN figure as one uint8 image: the top row shows the column sources, the left
    column the row sources, and cell (r, c) takes its coarse styles (layers < crossover) from
    column source c and its fine styles from row source r."""
    generator.eval()
    rows_ws = _seed_styles(generator, list(row_seeds), truncation_psi)
    cols_ws = _seed_styles(generator, list(col_seeds), truncation_psi)
    col_images, row_images = _render(generator, cols_ws), _render(generator, rows_ws)
    grid: list[list[np.ndarray | None]] = [[None, *col_images]]
    for r, row_ws in enumerate(rows_ws):
        mixes = _render(generator, _mix(cols_ws, row_ws[None].expand_as(cols_ws), int(crossover)))
        grid.append([row_images[r], *mixes])
    return image_grid(grid)


@torch.no_grad()
def truncation_sweep(generator: Generator, seeds: Sequence[int], psis: Sequence[float]) -> np.ndarray:
    """A uint8 grid image: a row per seed, a column per truncation psi."""
    generator.eval()
    rows = [[_render(generator, _seed_styles(generator, [seed], float(psi)))[0] for psi in psis] for seed in seeds]
    return image_grid(rows)


# --- export for the registry -------------------------------------------------------------


def export_bundle(family: PaintingGanFamily, step: int | None = None) -> dict:
    """What a registered model needs, as tensors and plain values (torch.load(weights_only=True)).
    The generator's state holds w_avg (`mapping.w_avg`) and the fixed noise maps."""
    return {
        "format": BUNDLE_FORMAT,
        "config": family.config.to_dict(),
        "generator": family.sampling_generator().state_dict(),
        "step": step,
    }


def load_bundle(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_generator(bundle: dict | str | Path) -> Generator:
    if not isinstance(bundle, dict):
        bundle = load_bundle(bundle)
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"not a painting GAN bundle: format {bundle.get('format')!r}")
    generator = Generator(PaintingGanConfig.from_dict(bundle["config"]))
    generator.load_state_dict(bundle["generator"])
    return generator.requires_grad_(False).eval()


def save_bundle(bundle: dict, path: str | Path) -> Path:
    from corpora.atomic import atomic_write  # training side only; the pyfunc never writes

    return atomic_write(path, lambda file: torch.save(bundle, file))


def load_pictures(manifest_path: str | Path) -> dict[str, np.ndarray]:
    """uint8 (N, H, W, C) pictures of a painting shard manifest: "train", "heldout" (may be
    empty: ingest holds out ~10% of 13 pictures) and "all"."""
    from corpora.ingest import shard_paths
    from corpora.shards import read_shards, tensors_from_table

    table = read_shards(shard_paths(Path(manifest_path), "images"), columns=["pixels", "split"])
    pixels = tensors_from_table(table, "pixels")
    split = np.asarray(table.column("split").to_pylist())
    return {"train": pixels[split == "train"], "heldout": pixels[split == "heldout"], "all": pixels}


# --- command line: `python -m models.painting_gan --run-dir runs/x` --------------------------


def main(argv: Sequence[str] | None = None) -> dict:
    """Train on the painting shards (or an .npz with `pictures` uint8 (N,H,W,C)) into a run
    folder, resuming if it holds checkpoints; writes bundle.pt and prints a JSON summary."""
    parser = argparse.ArgumentParser(prog="python -m models.painting_gan", description=main.__doc__)
    parser.add_argument("--manifest", type=Path, default=Path("data/shards/painting/manifest.json"))
    parser.add_argument("--data", type=Path, help="an .npz with `pictures`, instead of --manifest")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--widths", help="comma-separated stage widths, 4x4 stage first")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--max-seconds", type=float)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", default="auto", choices=["auto", "on", "off"])
    args = parser.parse_args(argv)

    from models.trainer import fit  # training needs corpora/ (atomic writes); sampling does not

    torch.set_num_threads(args.threads)
    if args.data:
        pictures = np.load(args.data, allow_pickle=False)["pictures"]
    else:
        split = load_pictures(args.manifest)
        pictures = split["train"] if len(split["train"]) else split["all"]
    overrides = {key: value for key, value in dict(resolution=args.resolution, steps=args.steps,
                                                   batch_size=args.batch_size, seed=args.seed).items() if value is not None}
    if args.widths:
        overrides["widths"] = tuple(int(w) for w in args.widths.split(","))
    config = PaintingGanConfig.profile(args.profile, channels=int(pictures.shape[3]), **overrides)
    trainer_overrides = {k: v for k, v in dict(checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                                               max_seconds=args.max_seconds, bf16=args.bf16).items() if v is not None}
    family = PaintingGanFamily(config, pictures)

    def log(step: int, metrics: dict) -> None:
        print(json.dumps({"step": step, **{k: round(v, 5) for k, v in metrics.items()}}), file=sys.stderr, flush=True)

    result = fit(family, config.trainer_config(**trainer_overrides), args.run_dir, torch.device(args.device), log=log,
                 checkpoint_extra={"family": "painting_gan", "config": config.to_dict()})
    if result.finished:
        save_bundle(export_bundle(family, result.step), args.run_dir / "bundle.pt")
    summary = {"step": result.step, "finished": result.finished, "resumed_from": result.resumed_from,
               "seconds": round(result.seconds, 2), "bf16": result.bf16, "checkpoint": str(result.checkpoint)}
    print(json.dumps(summary), flush=True)
    return summary



# --- the shared entry point's run (python -m models.train --family painting-gan) -------------

CHAMPION_RULE = ChampionRule("kid_style", higher_is_better=False)  # KID on the random CNN's style statistics against real crops; lower wins
CHAMPION_METRIC = CHAMPION_RULE.metric


def run_training(request, run):
    """Train on random crops of the manifest's training pictures; score samples against real crops
    with a real-vs-real floor and an untrained-generator ceiling."""
    from models import painting_metrics
    from models.train import TrainingOutcome

    pictures = load_pictures(run.manifest)
    config = PaintingGanConfig.from_dict(request.model_config)
    family = PaintingGanFamily(config, pictures["train"])
    if request.init_from:
        start = load_generator(request.init_from).state_dict()
        for generator in (family.generator, family.ema_generator):
            generator.load_state_dict(start)
        run.report.log(f"starting from the weights in {request.init_from}")
    result = run.fit(family, config, request)
    if not run.distributed.is_main:
        return None
    bundle = save_bundle(export_bundle(family, step=result.step), run.run_dir / "bundle.pt")
    report = painting_metrics.painting_reports(
        {"untrained_generator": painting_metrics.untrained_generator(config), "model": load_generator(bundle)},
        pictures["train"], heldout=pictures["heldout"], n=request.options.get("eval_samples", 256), seed=request.seed)
    kid_key = next(k for k in report["model"] if k.startswith("kid_style_") and not k.endswith("_std"))
    score = float(report["model"][kid_key])
    summary = {CHAMPION_METRIC: score, kid_key: score, f"{CHAMPION_METRIC}_floor": report["real_vs_real"][kid_key],
               f"{CHAMPION_METRIC}_ceiling": report["untrained_generator"][kid_key],
               "near_copies": report["model"]["near_copies"],
               "near_copies_real_vs_real": report["real_vs_real"]["near_copies"]}
    return TrainingOutcome(
        bundle=str(bundle), checkpoint=str(result.checkpoint), step=result.step, resumed_from=result.resumed_from,
        train_seconds=result.seconds, score=score, summary=summary,
        report_markdown=painting_metrics.format_painting_report(report),
        details={"train_pictures": len(pictures["train"]), "heldout_pictures": len(pictures["heldout"]),
                 "feature_network": report["model"]["feature_network"]},
    )


if __name__ == "__main__":
    main()
