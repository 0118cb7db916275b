"""A tiny painting GAN for the tests that run every family (tests/reliability): the same family
from the same synthetic pictures every time it is built, in any process.

The shape every family's `testing` module shares: `VARIANTS`, `tiny(steps, checkpoint_every,
variant)`, `bundle_round_trip(family, folder)` and `WEIGHTS_LOADERS`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.bundle import save_bundle
from models.painting_gan.config import PaintingGanConfig
from models.painting_gan.sampling import load_bundle, load_generator
from models.painting_gan.training import PaintingGanFamily, export_bundle

VARIANTS: tuple[str, ...] = ("",)


def tiny(steps: int, checkpoint_every: int, variant: str = ""):
    """(family, models.trainer.TrainerConfig): an 8x8 StyleGAN2-lite on random crops of noise pictures."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown painting GAN variant {variant!r}: choose one of {VARIANTS}")
    pictures = np.random.default_rng(2).integers(0, 256, size=(6, 24, 32, 3), dtype=np.uint8)
    config = PaintingGanConfig.profile("stylegan2-demo", resolution=8, widths=(16, 8), z_dim=8, w_dim=8, mapping_layers=2,
                                       r1_every=4, batch_size=4, steps=steps, seed=4)
    trainer = config.trainer_config(steps=steps, checkpoint_every=checkpoint_every, log_every=1000, keep_checkpoints=3)
    return PaintingGanFamily(config, pictures), trainer


def bundle_round_trip(family: PaintingGanFamily, folder: Path) -> tuple[dict, dict]:
    """(exported bundle, the bundle read back weights-only); the weights must fit the generator."""
    bundle = export_bundle(family, step=0)
    loaded = load_bundle(save_bundle(bundle, Path(folder) / "bundle.pt"))
    load_generator(loaded)
    return bundle, loaded


# every loader of a file a registry or a user may hand the family
WEIGHTS_LOADERS: dict[str, Callable[[Path], object]] = {"load_bundle": load_bundle}


# Asset config (by asset name) that makes the family's Dagster side run in seconds on tiny corpora:
# what the end-to-end tests pass for this family.
TINY_RUN_CONFIG = {
    "painting_gan": {"steps": 3, "batch_size": 4, "eval_samples": 16},
    "painting_gallery": {"transfer_steps": 4, "transfer_size": 48, "triptychs": 1},
}
