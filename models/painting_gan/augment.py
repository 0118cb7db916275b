"""What the painting GAN trains on: random crops of a few pictures, and DiffAugment.

The painting corpus is 8 paintings. Each batch is freshly cut from them (random crop side in
`crop_scale` of the picture's short side, random position and horizontal flip, resized to
`resolution` with antialiasing), drawn from torch's global RNG so a resumed run sees the same
crops. DiffAugment (Zhao et al. 2020: color, translation, cutout) is applied to real and fake
images alike in D's and G's steps; it is differentiable, so G learns the un-augmented
distribution.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.generators import to_uint8, to_unit_range
from models.painting_gan.config import DEFAULT_CROP_SCALE, augmentation_names

TRANSLATION_RATIO, CUTOUT_RATIO = 0.125, 0.5  # DiffAugment's defaults
FLIP_PROBABILITY = 0.5


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

