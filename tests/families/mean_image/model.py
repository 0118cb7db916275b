"""The model: one learned picture and one learned noise level."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from models.bundle import load_bundle
from models.family_config import FamilyConfig

BUNDLE_FORMAT = "test.mean_image/1"


@dataclass
class MeanImageConfig(FamilyConfig):
    PROFILES: ClassVar[dict[str, dict]] = {"demo": {"steps": 20}}

    steps: int = 20
    batch_size: int = 16
    lr: float = 0.1
    seed: int = 0


class MeanImage(nn.Module):
    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(shape))
        self.log_std = nn.Parameter(torch.zeros(()))

    def sample(self, n: int, seed: int) -> np.ndarray:
        noise = torch.randn((n, *self.mean.shape), generator=torch.Generator().manual_seed(int(seed)))
        pixels = (self.mean + self.log_std.exp() * noise).clamp(0, 1) * 255
        return pixels.round().to(torch.uint8).detach().numpy()


def load_model(path) -> MeanImage:
    bundle = load_bundle(path, (BUNDLE_FORMAT,))
    model = MeanImage(tuple(bundle["shape"]))
    model.load_state_dict(bundle["state_dict"])
    return model
