"""The painting GAN's settings and its named profiles."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from models.family_config import FamilyConfig

MIN_RESOLUTION = 8
ARCHITECTURES = ("stylegan2", "fastgan")  # models.painting_gan.networks, models.painting_gan.fastgan
FASTGAN_MIN_RESOLUTION = 16  # its discriminator reads a 16x16 and an 8x8 map
AUGMENTATIONS = ("color", "translation", "cutout")  # DiffAugment's policies (models.painting_gan.augment)
DEFAULT_CROP_SCALE = (0.3, 1.0)


def augmentation_names(policy: str) -> list[str]:
    return [name.strip() for name in policy.split(",") if name.strip()]


# FastGAN at 64x64 at half the paper-narrowed widths, batch 16 for 600 steps (betas are the
# paper's): about 2.5 minutes of the first run on 2 idle cores; batch 8 for 700 steps cost
# 0.7x as much and scored worse and less steadily over four seeds. Noise inputs and a blurred D
# took the dot lattice and the worst seeds away for 1.1x the CPU (docs/painting-gan.md)
FASTGAN_DEMO = dict(architecture="fastgan", resolution=64, widths=(128, 64, 32, 16, 8), z_dim=64,
                    batch_size=16, lr=2e-4, betas=(0.5, 0.999), r1_gamma=0.0, style_mixing_prob=0.0, steps=600,
                    noise_injection=True, blur_downsampling=True)


@dataclass
class PaintingGanConfig(FamilyConfig):
    architecture: str = "stylegan2"  # one of ARCHITECTURES
    resolution: int = 32  # power of two >= 8 (>= 16 for fastgan)
    channels: int = 3
    z_dim: int = 64
    widths: tuple[int, ...] = (128, 128, 64, 32)  # channels per resolution stage, 4x4 first; D mirrors them
    # stylegan2 only
    w_dim: int = 64
    mapping_layers: int = 4  # the paper has 8; 4 is enough at this scale and halves its cost
    mapping_lr_mult: float = 0.01
    r1_gamma: float = 0.05  # 0: no R1 (fastgan has none)
    r1_every: int = 16  # lazy regularization interval, in D steps
    style_mixing_prob: float = 0.9
    # fastgan only: weight of D's self-supervised reconstruction loss
    reconstruction_weight: float = 1.0
    noise_injection: bool = False  # the paper's comp blocks (noise inputs) at every other doubling
    blur_downsampling: bool = False  # a fixed blur before D's stride-2 convs
    diffaugment: str = "color,translation,cutout"  # comma-separated subset of AUGMENTATIONS; "" for none
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE  # crop side as a fraction of the picture's short side
    ema_decay: float = 0.999
    lr: float = 2e-3
    betas: tuple[float, float] = (0.0, 0.99)
    batch_size: int = 16
    steps: int = 1500
    seed: int = 0

    PROFILES: ClassVar[dict[str, dict]] = {
        "demo": FASTGAN_DEMO,
        # the StyleGAN2-lite at 32x32 (timings: docs/painting-gan.md)
        "stylegan2-demo": dict(resolution=32, widths=(128, 128, 64, 32), z_dim=64, w_dim=64, batch_size=16, steps=1500),
        # the demo six times longer: about 20 minutes of one CPU core in NCHW (0.33 CPU s a step,
        # docs/painting-gan.md), 18 in NHWC (docs/performance.md)
        "cpu-long": {**FASTGAN_DEMO, "steps": 3600},
        # the StyleGAN2-lite with twice the 4x4 width and the batch, for the same 20 minutes (1.03 CPU s a step)
        "stylegan2-cpu-long": dict(resolution=32, widths=(256, 128, 64, 32), z_dim=128, w_dim=128, batch_size=32,
                                   steps=1150),
        # 128x128 (the corpus' size, so crops are downscaled at most, never upscaled), config-e-like widths
        "gpu": dict(resolution=128, widths=(512, 512, 512, 256, 128, 64), z_dim=512, w_dim=512, mapping_layers=8,
                    crop_scale=(0.5, 1.0), r1_gamma=0.2, batch_size=32, steps=25000),
    }

    def __post_init__(self):
        self.widths, self.betas, self.crop_scale = tuple(self.widths), tuple(self.betas), tuple(self.crop_scale)
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; known: {ARCHITECTURES}")
        if self.architecture == "fastgan" and self.resolution < FASTGAN_MIN_RESOLUTION:
            raise ValueError(f"fastgan needs a resolution >= {FASTGAN_MIN_RESOLUTION}, not {self.resolution}")
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
