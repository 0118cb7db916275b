"""A tiny music VAE (chorales) for the tests that run every family (tests/reliability): the same
family from the same synthetic tokens every time it is built, in any process.

The shape every family's `testing` module shares: `VARIANTS`, `tiny(steps, checkpoint_every,
variant)`, `bundle_round_trip(family, folder)` and `WEIGHTS_LOADERS`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.bundle import save_bundle
from models.music_vae.config import MusicVaeConfig
from models.music_vae.sampling import load_bundle, load_model
from models.music_vae.training import MusicVaeFamily, export_bundle

VARIANTS: tuple[str, ...] = ("",)
KIND = "chorale"


def token_windows(n: int = 24, voices: int = 4, steps: int = 32, seed: int = 0) -> np.ndarray:
    """(n, voices, steps) uint8 tokens: note-ons in a voice's range, HOLDs and NOTE_OFFs (130 classes)."""
    rng = np.random.default_rng(seed)
    tokens = np.full((n, voices, steps), 129, dtype=np.uint8)  # HOLD
    for v in range(voices):
        low = 72 - 8 * v
        events = rng.random((n, steps))
        pitches = rng.integers(low, low + 10, size=(n, steps))
        tokens[:, v][events < 0.3] = pitches[events < 0.3]
        tokens[:, v][(events >= 0.3) & (events < 0.35)] = 128  # NOTE_OFF
    return tokens


def tiny(steps: int, checkpoint_every: int, variant: str = ""):
    """(family, models.trainer.TrainerConfig): a 4-voice chorale VAE over 8-step windows."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown music VAE variant {variant!r}: choose one of {VARIANTS}")
    # sampling_rate > 0: scheduled sampling from step 0, so the global RNG drives the decoder's inputs
    config = MusicVaeConfig.profile("demo", kind=KIND, steps_per_window=8, embed_dim=8, encoder_hidden=16,
                                    decoder_hidden=16, decoder_layers=1, latent_dim=4, batch_size=8,
                                    sampling_rate=20.0, beta_rate=0.9, free_bits=0.0, steps=steps, seed=5)
    windows = token_windows(voices=config.voices, steps=8, seed=1)
    trainer = config.trainer_config(steps=steps, checkpoint_every=checkpoint_every, log_every=1000, keep_checkpoints=3)
    return MusicVaeFamily(config, windows if config.voices > 1 else windows[:, 0]), trainer


def bundle_round_trip(family: MusicVaeFamily, folder: Path) -> tuple[dict, dict]:
    """(exported bundle, the bundle read back weights-only); the weights must fit the model."""
    bundle = export_bundle(family, steps={family.config.kind: 0})
    loaded = load_bundle(save_bundle(bundle, Path(folder) / "bundle.pt"))
    load_model(loaded)
    return bundle, loaded


# every loader of a file a registry or a user may hand the family
WEIGHTS_LOADERS: dict[str, Callable[[Path], object]] = {"load_bundle": load_bundle}


# Asset config (by asset name) that makes the family's Dagster side run in seconds on tiny corpora:
# what the end-to-end tests pass for this family.
TINY_RUN_CONFIG = {"music_vae": {"kinds": ["melody"], "steps": 3, "eval_samples": 4}}
