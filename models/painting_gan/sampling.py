"""Sampling the painting GAN: images, style mixes and truncation sweeps, and the generator of a
bundle. What the registered model runs, so it imports only models/.

Sampling uses the EMA generator with the fixed per-layer noise maps stored in the model
(`noise_mode="const"`, as StyleGAN2's generate.py), so an image depends only on its w's:
`style_mix(g, a, b, 0)` is exactly `sample(g, 1, seed=b)`. The grids come back as rows of
cells; `corpora.preview.contact_sheet` lays them out as one picture.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from models import bundle as bundles
from models.generators import latents, to_uint8
from models.painting_gan.config import PaintingGanConfig
from models.painting_gan.networks import build_generator

BUNDLE_FORMAT = "atelier.painting_gan/1"
SAMPLE_CHUNK = 64  # images per forward pass when sampling, to bound memory


def num_style_layers(generator: nn.Module) -> int:
    """How many w's one image takes (the crossover range of style mixing is 0..this)."""
    return generator.num_ws


def _device_of(generator: nn.Module) -> torch.device:
    return next(generator.parameters()).device


def _seed_styles(generator: nn.Module, seeds: Sequence[int], truncation_psi: float) -> torch.Tensor:
    """ws of one image per seed, each seed's z exactly as `sample(generator, 1, seed)` draws it."""
    z = torch.cat([latents(1, generator.z_dim, seed) for seed in seeds]).to(_device_of(generator))
    return generator.styles(z, truncation_psi)


def _render(generator: nn.Module, ws: torch.Tensor) -> np.ndarray:
    chunks = [to_uint8(generator.synthesis(ws[i : i + SAMPLE_CHUNK], noise_mode="const")) for i in range(0, len(ws), SAMPLE_CHUNK)]
    return np.concatenate(chunks) if chunks else np.zeros((0, generator.resolution, generator.resolution, generator.channels), np.uint8)


@torch.no_grad()
def sample(generator: nn.Module, n: int, seed: int = 0, truncation_psi: float = 1.0) -> np.ndarray:
    """n images as uint8 (n, H, W, C); the same seed and psi always give the same images."""
    generator.eval()
    z = latents(n, generator.z_dim, seed).to(_device_of(generator))
    return _render(generator, generator.styles(z, truncation_psi))


def _mix(ws_a: torch.Tensor, ws_b: torch.Tensor, crossover: int) -> torch.Tensor:
    if not 0 <= crossover <= ws_a.shape[1]:
        raise ValueError(f"crossover must lie in 0..{ws_a.shape[1]}, not {crossover}")
    return torch.cat([ws_a[:, :crossover], ws_b[:, crossover:]], dim=1)


@torch.no_grad()
def style_mix(generator: nn.Module, seed_a: int, seed_b: int, crossover: int, truncation_psi: float = 1.0) -> np.ndarray:
    """One image (1, H, W, C): the coarse styles (layers < crossover) of seed_a, the fine ones
    of seed_b. crossover 0 is sample(generator, 1, seed_b); num_style_layers is seed_a's."""
    generator.eval()
    ws_a, ws_b = _seed_styles(generator, [seed_a, seed_b], truncation_psi).split(1)
    return _render(generator, _mix(ws_a, ws_b, int(crossover)))


@torch.no_grad()
def style_mixing_grid(generator: nn.Module, row_seeds: Sequence[int], col_seeds: Sequence[int], crossover: int,
                      truncation_psi: float = 1.0) -> list[list[np.ndarray | None]]:
    """The StyleGAN figure as rows of uint8 (H, W, C) cells: the top row shows the column
    sources (after an empty corner, None), the left column the row sources, and cell (r, c)
    takes its coarse styles (layers < crossover) from column source c and its fine styles from
    row source r."""
    generator.eval()
    rows_ws = _seed_styles(generator, list(row_seeds), truncation_psi)
    cols_ws = _seed_styles(generator, list(col_seeds), truncation_psi)
    col_images, row_images = _render(generator, cols_ws), _render(generator, rows_ws)
    grid: list[list[np.ndarray | None]] = [[None, *col_images]]
    for r, row_ws in enumerate(rows_ws):
        mixes = _render(generator, _mix(cols_ws, row_ws[None].expand_as(cols_ws), int(crossover)))
        grid.append([row_images[r], *mixes])
    return grid


@torch.no_grad()
def truncation_sweep(generator: nn.Module, seeds: Sequence[int], psis: Sequence[float]) -> list[list[np.ndarray]]:
    """Rows of uint8 (H, W, C) cells: a row per seed, a column per truncation psi."""
    generator.eval()
    return [[_render(generator, _seed_styles(generator, [seed], float(psi)))[0] for psi in psis] for seed in seeds]


# --- a bundle's generator ------------------------------------------------------------------


def load_bundle(path: str | Path) -> dict:
    return bundles.load_bundle(path, (BUNDLE_FORMAT,))


def load_generator(bundle: dict | str | Path) -> nn.Module:
    bundle = bundles.as_bundle(bundle, (BUNDLE_FORMAT,))
    generator = build_generator(PaintingGanConfig.from_dict(bundle["config"]))
    generator.load_state_dict(bundle["generator"])
    return generator.requires_grad_(False).eval()
