"""The noise inputs both generators share: a per-pixel map, one for all channels, chosen by mode."""
from __future__ import annotations

import torch

NOISE_MODES = ("random", "const", "none")  # fresh each pass (training), drawn once (sampling), off


def noise_map(x: torch.Tensor, const_noise: torch.Tensor, noise_mode: str) -> torch.Tensor | None:
    """(N, 1, H, W) noise for `x` (N, C, H, W), `const_noise` in "const" mode, None in "none"."""
    if noise_mode == "random":
        return torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
    if noise_mode == "const":
        return const_noise.to(x.dtype)
    if noise_mode == "none":
        return None
    raise ValueError(f"noise_mode must be one of {NOISE_MODES}, not {noise_mode!r}")
