"""The painting GAN's networks: a StyleGAN2 generator (Karras et al. 2020, config-e "skip"
generator, narrowed) and its residual discriminator.

Generator:
- a mapping network z -> w: z is normalized to the unit sphere, then `mapping_layers`
  fully-connected layers whose learning rate is `mapping_lr_mult` (0.01 in the paper) of the rest;
  it tracks a running mean of w (`mapping.w_avg`, a buffer, so it travels in every checkpoint
  and bundle) for truncation w' = w_avg + psi (w - w_avg) at sampling;
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

Not implemented: path-length regularization, and the paper's FIR-filtered resampling
(bilinear up, average-pool down instead).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.painting_gan.config import PaintingGanConfig
from models.painting_gan.fastgan import FastGanDiscriminator, FastGanGenerator
from models.painting_gan.noise import noise_map

LEAKY_SLOPE = 0.2
ACTIVATION_GAIN = math.sqrt(2)  # keeps the activations' scale through leaky ReLU (StyleGAN's def_gain)
DEMODULATION_EPS = 1e-8
Z_NORMALIZE_EPS = 1e-8
W_AVG_BETA = 0.995  # the paper's decay of the tracked mean of w
MBSTD_GROUP = 4  # minibatch-stddev group size (StyleGAN2's default)
MBSTD_EPS = 1e-8
RESIDUAL_SCALE = 1 / math.sqrt(2)  # the residual D's skip + main sum keeps unit variance
BASE_RESOLUTION = 4  # the learned constant's size; D ends at it too


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
    sampling and the other in training, where it is about twice as fast on CPU.
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
        noise = noise_map(x, self.noise_const, noise_mode)
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


# (generator, discriminator) classes of each of config.ARCHITECTURES
NETWORKS = {"stylegan2": (Generator, Discriminator), "fastgan": (FastGanGenerator, FastGanDiscriminator)}


def build_generator(config: PaintingGanConfig) -> nn.Module:
    return NETWORKS[config.architecture][0](config)


def build_discriminator(config: PaintingGanConfig) -> nn.Module:
    return NETWORKS[config.architecture][1](config)
