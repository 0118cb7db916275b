"""A tiny image GAN for the tests that run every family (tests/reliability): the same family
from the same synthetic data every time it is built, in any process.

The shape every family's `testing` module shares: `VARIANTS`, `tiny(steps, checkpoint_every,
variant)`, `bundle_round_trip(family, folder)` and `WEIGHTS_LOADERS`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.bundle import save_bundle
from models.classifier import load_classifier
from models.image_gan.config import ARCHITECTURE_DEFAULTS, ImageGanConfig
from models.image_gan.sampling import load_bundle, load_generator
from models.image_gan.training import ImageGanFamily, export_bundle

VARIANTS: tuple[str, ...] = tuple(ARCHITECTURE_DEFAULTS)  # the architectures; "" is the first


def bar_images(n: int = 48, resolution: int = 16, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale noise with a bright bar whose position is the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 40, size=(n, resolution, resolution, 1), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, :, 2 + 4 * label : 5 + 4 * label] = 220
    return images, labels


def tiny(steps: int, checkpoint_every: int, variant: str = ""):
    """(family, models.trainer.TrainerConfig): a 16x16 class-conditional GAN on bar images."""
    architecture = variant or VARIANTS[0]
    if architecture not in VARIANTS:
        raise ValueError(f"unknown image GAN variant {variant!r}: choose one of {VARIANTS}")
    images, labels = bar_images()
    extra = {"n_critic": 2} if architecture == "wgan-gp" else {}
    config = ImageGanConfig.profile("demo", architecture=architecture, resolution=16, widths=(16, 8), latent_dim=8,
                                    embed_dim=4, num_classes=3, batch_size=8, steps=steps, seed=3, **extra)
    trainer = config.trainer_config(steps=steps, checkpoint_every=checkpoint_every, log_every=1000, keep_checkpoints=3)
    return ImageGanFamily(config, images, labels, class_names=["a", "b", "c"]), trainer


def bundle_round_trip(family: ImageGanFamily, folder: Path) -> tuple[dict, dict]:
    """(exported bundle, the bundle read back weights-only); the weights must fit the generator."""
    bundle = export_bundle(family, step=0)
    loaded = load_bundle(save_bundle(bundle, Path(folder) / "bundle.pt"))
    load_generator(loaded)
    return bundle, loaded


# every loader of a file a registry or a user may hand the family
WEIGHTS_LOADERS: dict[str, Callable[[Path], object]] = {
    "load_bundle": load_bundle,
    "load_classifier": load_classifier,
}


# Asset config (by asset name) that makes the family's Dagster side run in seconds on tiny corpora:
# what the end-to-end tests pass for this family.
TINY_RUN_CONFIG = {
    "image_classifier": {"epochs": 1},
    "image_gan": {"steps": 4, "batch_size": 8},
}
