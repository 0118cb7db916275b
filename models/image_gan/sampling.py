"""A registered generator and what it draws: loading it from a bundle, samples, interpolations.

Imported by the registered pyfunc in a process that has only models/ and common/ on its path:
no corpora/, no dagster, no models.trainer, and nothing of this family's training or metrics.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import bundle as bundles
from models.generators import latents, slerp, to_uint8
from models.image_gan.config import ImageGanConfig
from models.image_gan.networks import Generator

BUNDLE_FORMAT = "atelier.image_gan/1"
SAMPLE_CHUNK = 256  # images per forward pass when sampling, to bound memory
BN_CALIBRATION_BATCHES, BN_CALIBRATION_SIZE = 16, 256


@torch.no_grad()
def recalibrate_batchnorm(generator: Generator, seed: int = 0, batches: int = BN_CALIBRATION_BATCHES,
                          batch_size: int = BN_CALIBRATION_SIZE) -> Generator:
    """Re-estimate BatchNorm running stats as an exact average over fresh samples: the running
    stats of the trained G do not belong to the EMA's averaged weights.

    Uses its own torch.Generator, never the global RNG, so calling it mid-training cannot
    change the run's random stream (and so its resume determinism).
    """
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return generator.eval()
    device = next(generator.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    saved_momentum = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: cumulative average over the batches below
    generator.train()
    for index in range(batches):
        z = torch.randn(batch_size, generator.latent_dim, generator=rng).to(device)
        labels = _default_labels(generator, batch_size, offset=index * batch_size, device=device)
        generator(z, labels)
    for m, momentum in zip(norms, saved_momentum):
        m.momentum = momentum
    return generator.eval()


def _default_labels(generator: Generator, n: int, offset: int = 0, device="cpu") -> torch.Tensor | None:
    # every class in turn, so a grid of n >= num_classes shows each class
    if not generator.num_classes:
        return None
    return (torch.arange(offset, offset + n, device=device) % generator.num_classes).long()


def _labels_tensor(generator: Generator, labels, n: int, device) -> torch.Tensor | None:
    if not generator.num_classes:
        return None
    if labels is None:
        return _default_labels(generator, n, device=device)
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    labels = labels.expand(n) if labels.numel() == 1 else labels
    if labels.numel() != n or labels.min() < 0 or labels.max() >= generator.num_classes:
        raise ValueError(f"labels must be one int or {n} ints in [0, {generator.num_classes})")
    return labels.to(device)


@torch.no_grad()
def sample(generator: Generator, n: int, seed: int = 0, labels=None, device: torch.device | str = "cpu") -> np.ndarray:
    """n images as uint8 (n, H, W, C); the same seed and labels always give the same images.
    Conditional models without `labels` cycle through the classes."""
    generator.eval()
    z = latents(n, generator.latent_dim, seed).to(device)
    y = _labels_tensor(generator, labels, n, device)
    chunks = [
        to_uint8(generator(z[i : i + SAMPLE_CHUNK], None if y is None else y[i : i + SAMPLE_CHUNK]))
        for i in range(0, n, SAMPLE_CHUNK)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, generator.resolution, generator.resolution, generator.channels), np.uint8)


@torch.no_grad()
def interpolate(generator: Generator, seed_a: int, seed_b: int, steps: int = 8, label_a: int | None = None,
                label_b: int | None = None, device: torch.device | str = "cpu") -> np.ndarray:
    """A strip of `steps` images from seed_a's latent to seed_b's (slerp), and, for a
    conditional model, from label_a's embedding to label_b's (linear)."""
    generator.eval()
    t = torch.linspace(0, 1, steps)
    z = slerp(latents(1, generator.latent_dim, seed_a), latents(1, generator.latent_dim, seed_b), t).to(device)
    embedding = None
    if generator.num_classes:
        label_a = 0 if label_a is None else label_a
        label_b = label_a if label_b is None else label_b
        ends = generator.label_embedding(torch.tensor([label_a, label_b], device=device))
        embedding = torch.lerp(ends[0:1], ends[1:2], t.to(device)[:, None])
    return to_uint8(generator(z, embedding=embedding))


# --- a bundle's generator ----------------------------------------------------------------


def load_bundle(path: str | Path) -> dict:
    """An image GAN bundle, read weights-only; any other format is refused."""
    return bundles.load_bundle(path, (BUNDLE_FORMAT,))


def load_generator(bundle: dict | str | Path) -> Generator:
    bundle = bundles.as_bundle(bundle, (BUNDLE_FORMAT,))
    generator = Generator(ImageGanConfig.from_dict(bundle["config"]))
    generator.load_state_dict(bundle["generator"])
    generator.class_names = list(bundle.get("class_names", []))
    return generator.eval()
