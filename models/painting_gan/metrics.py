"""Sample-quality metrics of the painting GAN, on the features that define style.

There is no Inception network here (its weights cannot be downloaded), and the image
classifier saw only grayscale clothing. So KID is computed on the style statistics of the
style-transfer feature network (models.painting_gan.style_transfer: every layer's channel means
and standard deviations), by default the untrained random multi-scale CNN. The number is called
`kid_style_random_cnn` (or `kid_style_classifier`): it ranks models on this corpus and is NOT
an Inception KID or FID. Features are standardized with the real reference's per-dimension
mean and std, because a random network's activation scale is arbitrary and the cubic KID
kernel is not scale-invariant.

The real reference is random crops of the training pictures at the generator's resolution and
crop scale, as the GAN saw them. Read a number against its floor and ceiling:
- `real_vs_real`: crops of the same pictures with another seed (the floor; with 8 paintings
  the held-out split has 0-2 pictures, too few to be a floor of its own);
- `heldout_vs_train` (only when there are held-out pictures): crops of pictures the GAN never
  saw, i.e. how far "another picture" is;
- an untrained generator (the ceiling), computed by the caller with the same function.

Memorization: each sample's nearest real crop in pixel space (models.distances.memorization);
a near copy is closer to a crop than crops typically are to each other. Because crops of the
same picture overlap, real crops themselves score many near copies: the real_vs_real row is
the floor for that count too.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.distances import kernel_distance, kid_subset_size, memorization
from models.painting_gan.augment import random_crops
from models.painting_gan.config import DEFAULT_CROP_SCALE
from models.painting_gan.networks import build_generator
from models.painting_gan.sampling import sample
from models.painting_gan.style_transfer import feature_network, style_statistics

DEFAULT_N = 256
REFERENCE_SIZE = 1024  # real crops in the reference of KID and of the nearest-neighbour search
KID_SUBSETS = 50
FLOOR_SEED_OFFSET = 1  # real_vs_real crops use seed + this, so they differ from the reference
SAMPLE_SEED_OFFSET = 2
STD_FLOOR = 1e-8  # a feature constant over the reference (a dead ReLU) is left unscaled


def _kid_name(network_name: str) -> str:
    return "kid_style_random_cnn" if network_name == "random" else f"kid_style_{network_name}"


@dataclass
class StyleReference:
    """The real side of every row of a report: random crops of the pictures and their style
    features, standardized by their own per-dimension mean and std (computed once per report)."""
    crops: np.ndarray
    network: nn.Module
    mean: np.ndarray
    std: np.ndarray
    features: np.ndarray  # standardized

    @classmethod
    def of(cls, pictures, resolution: int, scale: tuple[float, float], size: int, seed: int, network_name: str,
           classifier_state: Mapping | None) -> StyleReference:
        crops = random_crops(pictures, size, resolution, seed=seed, scale=scale)
        network = feature_network(network_name, seed, classifier_state)
        raw = style_statistics(network, crops)
        mean, std = raw.mean(0), raw.std(0)
        std = np.where(std > STD_FLOOR, std, 1.0)
        return cls(crops, network, mean, std, (raw - mean) / std)


def painting_report(generator_or_samples: nn.Module | np.ndarray, pictures, n: int = DEFAULT_N, seed: int = 0,
                    scale: tuple[float, float] | None = None, reference_size: int = REFERENCE_SIZE,
                    kid_subsets: int = KID_SUBSETS, network_name: str = "random",
                    classifier_state: Mapping | None = None, reference: StyleReference | None = None) -> dict:
    """KID on style features and near copies of `n` samples (or the given uint8 (N, H, W, C)
    images) against random crops of `pictures` (uint8 (N, H, W, C)) at the samples' size.

    `scale` defaults to the generator's training crop scale (a generator carries it), else
    the config's default. `reference`: that of painting_reports, built here when None (its
    crops must be at the samples' size and scale). Everything is deterministic given `seed`."""
    if isinstance(generator_or_samples, nn.Module):
        samples = sample(generator_or_samples, n, seed=seed + SAMPLE_SEED_OFFSET)
        scale = scale or generator_or_samples.crop_scale
    else:
        samples = np.asarray(generator_or_samples)
    scale = tuple(scale or DEFAULT_CROP_SCALE)
    if reference is None:
        reference = StyleReference.of(pictures, samples.shape[1], scale, reference_size, seed, network_name,
                                      classifier_state)
    features = (style_statistics(reference.network, samples) - reference.mean) / reference.std
    kid, kid_std = kernel_distance(features, reference.features, kid_subsets,
                                   subset_size=kid_subset_size(min(len(samples), len(reference.crops))), seed=seed)
    copies = memorization(samples, reference.crops, seed=seed)
    name = _kid_name(network_name)
    return {
        "n": int(len(samples)),
        "resolution": int(samples.shape[1]),
        "feature_network": reference.network.description,
        name: kid,
        f"{name}_std": kid_std,
        "near_copies": copies["near_copy_count"],
        "near_copy_fraction": float(copies["near_copy"].mean()),
        "nearest_distance_median": float(np.median(copies["nearest_distance"])),
        "typical_nn_distance": copies["typical_nn_distance"],
    }


def painting_reports(samples: Mapping[str, nn.Module | np.ndarray], pictures, heldout=None, n: int = DEFAULT_N,
                     seed: int = 0, resolution: int | None = None, scale: tuple[float, float] | None = None,
                     reference_size: int = REFERENCE_SIZE, kid_subsets: int = KID_SUBSETS, network_name: str = "random",
                     classifier_state: Mapping | None = None) -> dict[str, dict]:
    """painting_report of each entry of `samples` (e.g. "model", "untrained"), with the
    real_vs_real floor (and heldout_vs_train when `heldout` has pictures) in front, every row
    against one StyleReference."""
    first = next(iter(samples.values()))
    if isinstance(first, nn.Module):
        resolution, scale = resolution or first.resolution, scale or first.crop_scale
    else:
        resolution = resolution or np.asarray(first).shape[1]
    scale = tuple(scale or DEFAULT_CROP_SCALE)
    rows = {"real_vs_real": random_crops(pictures, n, resolution, seed=seed + FLOOR_SEED_OFFSET, scale=scale)}
    if heldout is not None and len(heldout):
        rows["heldout_vs_train"] = random_crops(heldout, n, resolution, seed=seed + FLOOR_SEED_OFFSET, scale=scale)
    rows.update(samples)
    reference = StyleReference.of(pictures, resolution, scale, reference_size, seed, network_name, classifier_state)
    return {name: painting_report(value, pictures, n=n, seed=seed, scale=scale, kid_subsets=kid_subsets,
                                  network_name=network_name, reference=reference)
            for name, value in rows.items()}


def format_painting_report(report: Mapping[str, Mapping]) -> str:
    """The rows of painting_reports as a Markdown table."""
    first = next(iter(report.values()))
    kid = next(key for key in first if key.startswith("kid_style_") and not key.endswith("_std"))
    lines = [f"| set | n | {kid} (± std) | near copies |", "|---|---|---|---|"]
    for name, row in report.items():
        lines.append(f"| {name} | {row['n']} | {row[kid]:.4f} ± {row[kid + '_std']:.4f} | {row['near_copies']} |")
    return "\n".join(lines)


def untrained_generator(config) -> nn.Module:
    """The ceiling row's generator: the config's initial weights (w_avg is still zero)."""
    with torch.random.fork_rng(devices=[]):  # the caller's random stream stays as it was
        torch.manual_seed(config.seed)
        return build_generator(config).eval()
