"""A tiny mean-picture family for the tests that run every family: the shape every family's
`testing` module shares (VARIANTS, tiny, bundle_round_trip, WEIGHTS_LOADERS, TINY_RUN_CONFIG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mean_image.model import BUNDLE_FORMAT, MeanImageConfig, load_model
from mean_image.training import MeanImageFamily
from models.bundle import load_bundle, save_bundle

VARIANTS: tuple[str, ...] = ("",)


def tiny(steps: int, checkpoint_every: int, variant: str = ""):
    pixels = np.random.default_rng(7).integers(0, 256, size=(12, 8, 8, 1), dtype=np.uint8)
    config = MeanImageConfig(steps=steps, batch_size=4, seed=7)
    trainer = config.trainer_config(steps=steps, checkpoint_every=checkpoint_every, log_every=1000)
    return MeanImageFamily(config, pixels), trainer


def bundle_round_trip(family: MeanImageFamily, folder: Path) -> tuple[dict, dict]:
    bundle = {"format": BUNDLE_FORMAT, "shape": list(family.pixels.shape[1:]), "state_dict": family.model.state_dict()}
    path = save_bundle(bundle, Path(folder) / "bundle.pt")
    load_model(path)
    return bundle, load_bundle(path, (BUNDLE_FORMAT,))


WEIGHTS_LOADERS = {"load_model": load_model}
TINY_RUN_CONFIG: dict[str, dict] = {}
