"""What the generative families share: seeded latents, spherical interpolation, a weight EMA,
and the conversion between stored uint8 pictures and a network's [-1, 1] tensors."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

EMA_WARMUP = 10  # decay ramps as (1+k)/(EMA_WARMUP+k) so early EMA is not stuck at the init


def latents(n: int, latent_dim: int, seed: int) -> torch.Tensor:
    # CPU generator: the same seed gives the same latents on any device
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(int(seed)))


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation: Gaussian latents live near a sphere, a straight line cuts inside it."""
    norms = (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True)).clamp_min(1e-12)
    omega = torch.acos(((a * b).sum(-1, keepdim=True) / norms).clamp(-1 + 1e-7, 1 - 1e-7))
    t = t[:, None]
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def ema_decay(step: int, decay: float) -> float:
    return min(decay, (1 + step) / (EMA_WARMUP + step))


@torch.no_grad()  # the average is a copy, not part of any graph
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for averaged, current in zip(ema.parameters(), model.parameters()):
        averaged.lerp_(current, 1.0 - decay)
    for averaged, current in zip(ema.buffers(), model.buffers()):
        averaged.copy_(current)


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (N,H,W,C) -> float (N,C,H,W) in [-1, 1], a generator's tanh range."""
    return pixels.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N,C,H,W) in [-1, 1] -> uint8 (N,H,W,C), as stored in the corpus."""
    pixels = images.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()
