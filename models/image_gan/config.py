"""The image GAN's settings and its named profiles."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from models.family_config import FamilyConfig

# The architectures, and what choosing one switches to unless it is given too.
ARCHITECTURE_DEFAULTS: dict[str, dict] = {
    "dcgan": {},
    "wgan-gp": dict(lr_g=1e-4, lr_d=1e-4, betas=(0.0, 0.9), n_critic=5),  # the WGAN-GP paper's optimizer
    # Miyato & Koyama 2018's projection D; the optimizer stays DCGAN's (Miyato et al. 2018, setting C)
    "sngan": dict(d_conditioning="projection"),
}


@dataclass
class ImageGanConfig(FamilyConfig):
    architecture: str = "dcgan"  # a key of ARCHITECTURE_DEFAULTS
    resolution: int = 32
    channels: int = 1
    latent_dim: int = 64
    embed_dim: int = 32  # label embedding concatenated to z
    d_conditioning: str = "channel"  # "channel" (one-hot input maps) | "projection"
    widths: tuple[int, ...] = (128, 64, 32)  # G stage widths from 4x4 up; D mirrors them
    num_classes: int = 10  # 0: unconditional
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    n_critic: int = 1  # D steps per G step; a trainer step is one D step
    gp_weight: float = 10.0  # WGAN-GP only
    ema_decay: float = 0.999
    batch_size: int = 64
    steps: int = 1500
    seed: int = 0

    PROFILES: ClassVar[dict[str, dict]] = {
        # narrow nets, few steps at twice the learning rate: about a minute on a CPU; without
        # momentum (betas 0.0/0.9) they keep the variety that beta1 0.5 lost (docs/image-gan.md)
        "demo": dict(widths=(128, 64, 32), latent_dim=64, batch_size=64, steps=600, lr_g=4e-4, lr_d=4e-4,
                     betas=(0.0, 0.9)),
        # pytorch/examples' widths with the demo's betas: about 20 minutes of one CPU core in NCHW (0.52 CPU s
        # a step), 18-19 in NHWC (docs/performance.md)
        "cpu-long": dict(widths=(256, 128, 64), latent_dim=100, batch_size=64, steps=2300, betas=(0.0, 0.9)),
        "gpu": dict(widths=(512, 256, 128), latent_dim=128, batch_size=128, steps=50000),
    }

    def __post_init__(self):
        self.widths, self.betas = tuple(self.widths), tuple(self.betas)
        if self.d_conditioning not in ("channel", "projection"):
            raise ValueError(f"d_conditioning must be 'channel' or 'projection', not {self.d_conditioning!r}")
        if self.architecture not in ARCHITECTURE_DEFAULTS:
            raise ValueError(f"architecture must be one of {sorted(ARCHITECTURE_DEFAULTS)}, not {self.architecture!r}")
        stages = math.log2(self.resolution) - 2 if self.resolution >= 8 else -1
        if stages != int(stages) or stages < 1:
            raise ValueError(f"resolution must be a power of two >= 8, not {self.resolution}")
        if len(self.widths) != int(stages):
            raise ValueError(f"resolution {self.resolution} needs {int(stages)} widths (4x4 stage first), got {self.widths}")

    @classmethod
    def profile(cls, name: str, **overrides) -> "ImageGanConfig":
        """A named profile, with any field overridden. Choosing another architecture than the
        profile's also switches to that architecture's ARCHITECTURE_DEFAULTS unless they are given too."""
        architecture = overrides.get("architecture")
        if architecture and cls.PROFILES.get(name, {}).get("architecture") != architecture:
            overrides = {**ARCHITECTURE_DEFAULTS.get(architecture, {}), **overrides}
        return super().profile(name, **overrides)
