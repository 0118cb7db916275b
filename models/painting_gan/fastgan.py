"""FastGAN (Liu et al., ICLR 2021, "Towards Faster and Stabilized GAN Training for High-fidelity
Few-shot Image Synthesis"), narrowed for small pictures: the painting family's second
architecture (`architecture="fastgan"`). The design and its measurements: docs/painting-gan.md.

Generator: z -> a 4x4 map (transposed 4x4 conv, BatchNorm, GLU), then per doubling a nearest 2x
upsample, a 3x3 conv, BatchNorm and GLU; a 3x3 conv and tanh make the picture. With
`noise_injection`, the doublings to 8x8, 32x32, ... are the paper's "comp" blocks: two convs,
each followed by a per-pixel noise map times a learned weight. Skip-layer
excitation (SLE) multiplies the feature map of stage s + SLE_SPAN channel-wise by a gate in
(0, 1) computed from stage s (average-pooled to 4x4, a 4x4 conv to 1x1, leaky ReLU, a 1x1
conv, sigmoid). Feeding the gates another latent's low-resolution features changes the style
and keeps the content (the paper's Fig. 6): that is this generator's style mix.

Sampling uses standing statistics (as BigGAN's, Brock et al. 2019): the EMA generator's
BatchNorm statistics recomputed for its own weights over fixed-seed batches.

Discriminator: a 3x3 conv, then residual down blocks (a 4x4 stride-2 conv and a 3x3 conv,
beside an average pool and a 1x1 conv, averaged) down to 8x8, where a 4x4 conv gives a 5x5 map
of real/fake logits. Every conv is spectrally normalized and followed by BatchNorm; with
`blur_downsampling` a fixed low-pass comes before each stride-2 conv. Its
self-supervision: two small decoders reconstruct, from D's own features, the whole (augmented)
real picture from the 8x8 map, and one random quadrant of it from that quadrant of the 16x16
map, both at DECODED_SIZE; D adds their error to its hinge loss, so it must learn features that
describe the picture, not only ones that tell real from fake (the paper's remedy against D
overfitting a few images).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from models.painting_gan.config import PaintingGanConfig
from models.painting_gan.noise import NOISE_MODES, noise_map

SLE_SPAN = 3  # doublings from a gate's source to its target (the paper's 8->128 is 4, at 1024 px)
SLE_POOL = 4  # the gate's source is average-pooled to this size, then a conv of this kernel makes it 1x1
SLE_SLOPE = 0.1  # the gate's leaky ReLU (the paper's)
D_SLOPE = 0.2
LOGIT_KERNEL = 4  # on the 8x8 map: a 5x5 map of logits
FEATURE_SIZE, PART_FEATURE_SIZE = 8, 16  # the decoders read D's maps of these sizes
DECODED_SIZE = 32  # two doublings from the 8x8 map
QUADRANTS = 4
# standing statistics: BatchNorm's mean and variance recomputed over this many fixed-seed samples
STANDING_BATCHES, STANDING_BATCH_SIZE, STANDING_SEED = 8, 64, 0


def up_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Nearest 2x upsample, 3x3 conv to twice the channels, BatchNorm, GLU (which halves them)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(in_channels, 2 * out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(2 * out_channels), nn.GLU(dim=1))


class NoiseInjection(nn.Module):
    """x + weight * a per-pixel noise map shared by the channels, the weight starting at 0: fresh
    noise in "random" mode (training), the map drawn at construction in "const" mode (sampling,
    so a picture depends on its latent alone), none in "none". `FastGanGenerator.synthesis` sets
    the mode."""

    def __init__(self, size: int, seed: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.register_buffer("const_noise", torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(seed)))
        self.mode = "const"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = noise_map(x, self.const_noise, self.mode)
        return x if noise is None else x + self.weight * noise


class CompUpBlock(nn.Module):
    """The paper's "comp" up block: nearest 2x, then twice (3x3 conv, noise, BatchNorm, GLU)."""

    def __init__(self, in_channels: int, out_channels: int, size: int, seed: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv1 = nn.Conv2d(in_channels, 2 * out_channels, 3, padding=1, bias=False)
        self.noise1, self.norm1 = NoiseInjection(size, seed), nn.BatchNorm2d(2 * out_channels)
        self.conv2 = nn.Conv2d(out_channels, 2 * out_channels, 3, padding=1, bias=False)
        self.noise2, self.norm2 = NoiseInjection(size, seed + 1), nn.BatchNorm2d(2 * out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.glu(self.norm1(self.noise1(self.conv1(self.up(x)))), dim=1)
        return F.glu(self.norm2(self.noise2(self.conv2(x))), dim=1)


class Blur(nn.Module):
    """A fixed [1, 2, 1] x [1, 2, 1] / 16 low-pass per channel, edges replicated: before a stride-2
    conv it keeps a pattern of the stride's period from folding into the coarse map (Zhang 2019)."""

    def __init__(self, channels: int):
        super().__init__()
        kernel = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (kernel[:, None] * kernel[None, :] / 16).expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel.to(x.dtype), groups=x.shape[1])


class SkipLayerExcitation(nn.Module):
    def __init__(self, low_channels: int, high_channels: int):
        super().__init__()
        self.squeeze = nn.Conv2d(low_channels, high_channels, SLE_POOL)
        self.excite = nn.Conv2d(high_channels, high_channels, 1)

    def gate(self, low: torch.Tensor) -> torch.Tensor:
        """(N, high_channels, 1, 1) in (0, 1), from the low-resolution map alone."""
        x = F.leaky_relu(self.squeeze(F.adaptive_avg_pool2d(low, SLE_POOL)), SLE_SLOPE)
        return torch.sigmoid(self.excite(x))

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return high * self.gate(low)


class FastGanGenerator(nn.Module):
    # a "w" per input: the content latent (every stage) and the style latent (the SLE gates'
    # sources); sampling.py's style mix takes the content of one seed and the style of another
    num_ws = 2

    def __init__(self, config: PaintingGanConfig):
        super().__init__()
        self.z_dim, self.resolution, self.channels = config.z_dim, config.resolution, config.channels
        self.crop_scale = tuple(config.crop_scale)
        widths = config.widths
        self.initial = nn.Sequential(nn.ConvTranspose2d(config.z_dim, 2 * widths[0], 4, bias=False),
                                     nn.BatchNorm2d(2 * widths[0]), nn.GLU(dim=1))
        # with noise_injection, the doublings to 8x8, 32x32, ... are the paper's comp blocks
        self.ups = nn.ModuleList(
            CompUpBlock(a, b, 8 << stage, 2 * stage) if config.noise_injection and stage % 2 == 0 else up_block(a, b)
            for stage, (a, b) in enumerate(zip(widths, widths[1:])))
        # excitations[i] gates stage i + SLE_SPAN with stage i
        self.excitations = nn.ModuleList(SkipLayerExcitation(widths[i], widths[i + SLE_SPAN])
                                         for i in range(len(widths) - SLE_SPAN))
        self.to_rgb = nn.Conv2d(widths[-1], config.channels, 3, padding=1)

    def stages(self, z: torch.Tensor, last: int, sources: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The feature maps of stages 0..last (stage 0 is 4x4) from z, the SLE gates computed
        from `sources` (another latent's stages) or, by default, from these stages themselves."""
        features = [self.initial(z[:, :, None, None])]
        for stage in range(1, last + 1):
            x = self.ups[stage - 1](features[-1])
            if stage >= SLE_SPAN:
                x = self.excitations[stage - SLE_SPAN]((sources or features)[stage - SLE_SPAN], x)
            features.append(x)
        return features

    def styles(self, z: torch.Tensor, truncation_psi: float = 1.0, track_w_avg: bool = False) -> torch.Tensor:
        """z (N, z_dim) -> (N, 2, z_dim): the same latent for content and style, truncated toward
        z's mean, 0 (there is no mapping network; `track_w_avg` is the StyleGAN2 signature's)."""
        return (z * truncation_psi)[:, None, :].expand(-1, self.num_ws, -1)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """ws (N, 2, z_dim) -> pictures (N, C, H, W) in [-1, 1]; `noise_mode` ("random", "const"
        or "none", as StyleGAN2's) for the comp blocks' noise inputs, where there are any."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, not {noise_mode!r}")
        for module in self.modules():
            if isinstance(module, NoiseInjection):
                module.mode = noise_mode
        content, style = ws[:, 0], ws[:, 1]
        last = len(self.ups)
        sources = None if torch.equal(content, style) else self.stages(style, last - SLE_SPAN)
        return torch.tanh(self.to_rgb(self.stages(content, last, sources)[-1]))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "const") -> torch.Tensor:
        return self.synthesis(self.styles(z, truncation_psi), noise_mode)

    @torch.no_grad()
    def standing_statistics(self) -> FastGanGenerator:
        """Recompute every BatchNorm's running mean and variance for these weights (an EMA copy
        inherits the trained generator's, which fit other weights), as an exact average over
        fixed-seed batches, so the result is deterministic; leaves the generator in eval mode."""
        norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average
        self.train()
        device = next(self.parameters()).device
        for batch in range(STANDING_BATCHES):
            z = torch.randn(STANDING_BATCH_SIZE, self.z_dim, generator=torch.Generator().manual_seed(STANDING_SEED + batch))
            self(z.to(device))
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        return self.eval()


def d_conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Module:
    return spectral_norm(nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False))


def d_layer(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(d_conv(in_channels, out_channels, kernel, stride, padding), nn.BatchNorm2d(out_channels),
                         nn.LeakyReLU(D_SLOPE))


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, blur: bool = False):
        super().__init__()
        self.main = nn.Sequential(*([Blur(in_channels)] if blur else []),
                                  d_layer(in_channels, out_channels, 4, stride=2, padding=1),
                                  d_layer(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Sequential(nn.AvgPool2d(2), d_layer(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.main(x) + self.skip(x)) / 2


def decoder(in_channels: int, channels: int) -> nn.Sequential:
    """D's 8x8 map (or a quadrant of its 16x16 one) -> a DECODED_SIZE picture in [-1, 1]."""
    return nn.Sequential(up_block(in_channels, in_channels // 2), up_block(in_channels // 2, in_channels // 4),
                         nn.Conv2d(in_channels // 4, channels, 3, padding=1), nn.Tanh())


class FastGanDiscriminator(nn.Module):
    def __init__(self, config: PaintingGanConfig):
        super().__init__()
        widths = config.widths[::-1]  # full resolution first
        stages = len(widths) - widths_below(FEATURE_SIZE)
        self.from_rgb = nn.Sequential(d_conv(config.channels, widths[0], 3, padding=1), nn.LeakyReLU(D_SLOPE))
        self.downs = nn.ModuleList(DownBlock(a, b, config.blur_downsampling)
                                   for a, b in zip(widths[:stages], widths[1:stages]))
        self.logits = d_conv(widths[stages - 1], 1, LOGIT_KERNEL)
        self.decode_whole = decoder(widths[stages - 1], config.channels)
        self.decode_part = decoder(widths[stages - 2], config.channels)

    def features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """D's maps by size, from the input's down to 8x8."""
        x = self.from_rgb(x)
        maps = {x.shape[-1]: x}
        for down in self.downs:
            x = down(x)
            maps[x.shape[-1]] = x
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, LOGIT_MAP_SIZE^2) real/fake logits."""
        return self.logits(self.features(x)[FEATURE_SIZE]).flatten(1)

    def score_and_reconstruct(self, x: torch.Tensor, quadrant: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, the whole picture decoded from the 8x8 map, and quadrant `quadrant` (0-3,
        row-major) decoded from that quadrant of the 16x16 map."""
        maps = self.features(x)
        half = PART_FEATURE_SIZE // 2
        top, left = divmod(quadrant, 2)
        part = maps[PART_FEATURE_SIZE][:, :, top * half : (top + 1) * half, left * half : (left + 1) * half]
        return self.logits(maps[FEATURE_SIZE]).flatten(1), self.decode_whole(maps[FEATURE_SIZE]), self.decode_part(part)


def widths_below(size: int) -> int:
    """How many of the 4x4-first stages lie below `size` (4x4 ... size/2): D stops at `size`."""
    return (size // 4).bit_length() - 1


def reconstruction_targets(real: torch.Tensor, quadrant: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole picture and its quadrant `quadrant`, each resized to DECODED_SIZE: what the
    decoders of score_and_reconstruct must give back."""
    half = real.shape[-1] // 2
    top, left = divmod(quadrant, 2)
    part = real[:, :, top * half : (top + 1) * half, left * half : (left + 1) * half]
    resize = lambda x: F.interpolate(x, size=(DECODED_SIZE, DECODED_SIZE), mode="bilinear", align_corners=False,
                                     antialias=x.shape[-1] > DECODED_SIZE)
    return resize(real), resize(part)
