"""Tiny model families for the kill-and-resume test: name -> builder of (family, TrainerConfig).

Each builder makes the same family from the same synthetic data every time it is called, in
any process (the killed child and the test process both call it). To cover a new family, add
an entry to FAMILIES: `FamilyEntry(<module to import>, <builder>)`. An entry whose module does
not exist is skipped (`skip_unless_present`, importorskip-style), so a family can be listed
before its module lands; a module that exists but fails to import fails the test instead.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

STEPS, CHECKPOINT_EVERY = 60, 10


@dataclass(frozen=True)
class FamilyEntry:
    module: str  # imported (or the test is skipped) before `build` is called
    build: Callable[[], tuple[Any, Any]]  # -> (family, models.trainer.TrainerConfig)


def _trainer_config(config, **overrides):
    values = dict(steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, log_every=1000, keep_checkpoints=3)
    values.update(overrides)
    if hasattr(config, "trainer_config"):
        return config.trainer_config(**values)
    from models.trainer import TrainerConfig

    return TrainerConfig(batch_size=config.batch_size, seed=getattr(config, "seed", 0), **values)


# --- image GAN ----------------------------------------------------------------------------


def bar_images(n: int = 48, resolution: int = 16, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale noise with a bright bar whose position is the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 40, size=(n, resolution, resolution, 1), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, :, 2 + 4 * label : 5 + 4 * label] = 220
    return images, labels


def _image_gan(architecture: str) -> Callable[[], tuple[Any, Any]]:
    def build():
        from models.image_gan import ImageGanConfig, ImageGanFamily

        images, labels = bar_images()
        extra = {"n_critic": 2} if architecture == "wgan-gp" else {}
        config = ImageGanConfig.profile("demo", architecture=architecture, resolution=16, widths=(16, 8), latent_dim=8,
                                        embed_dim=4, num_classes=3, batch_size=8, steps=STEPS, seed=3, **extra)
        return ImageGanFamily(config, images, labels, class_names=["a", "b", "c"]), _trainer_config(config)

    return build


# --- music VAE ----------------------------------------------------------------------------


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


def _music_vae(kind: str) -> Callable[[], tuple[Any, Any]]:
    def build():
        from models.music_vae import MusicVaeConfig, MusicVaeFamily

        # sampling_rate > 0: scheduled sampling from step 0, so the global RNG drives the decoder's inputs
        config = MusicVaeConfig.profile("demo", kind=kind, steps_per_window=8, embed_dim=8, encoder_hidden=16,
                                        decoder_hidden=16, decoder_layers=1, latent_dim=4, batch_size=8,
                                        sampling_rate=20.0, beta_rate=0.9, free_bits=0.0, steps=STEPS, seed=5)
        voices = 4 if kind == "chorale" else 1
        windows = token_windows(voices=voices, steps=8, seed=1)
        return MusicVaeFamily(config, windows if voices > 1 else windows[:, 0]), _trainer_config(config)

    return build


# --- painting GAN (StyleGAN2-like, random crops) and video RNN (ConvLSTM + PixelCNN head) ---------


def _painting_gan():
    from models.painting_gan import PaintingGanConfig, PaintingGanFamily

    pictures = np.random.default_rng(2).integers(0, 256, size=(6, 24, 32, 3), dtype=np.uint8)
    config = PaintingGanConfig.profile("demo", resolution=8, widths=(16, 8), z_dim=8, w_dim=8, mapping_layers=2,
                                       r1_every=4, batch_size=4, steps=STEPS, seed=4)
    return PaintingGanFamily(config, pictures), _trainer_config(config)


def _video_rnn():
    from models.video_rnn import VideoRnnConfig, VideoRnnFamily

    clips = np.random.default_rng(3).integers(0, 256, size=(10, 6, 8, 8, 3), dtype=np.uint8)  # T=6 > M+K: random starts
    config = VideoRnnConfig.profile("demo", context_frames=3, horizon=2, resolution=8, channels=1, patch=2, hidden=(8,),
                                    kernel=3, cond_channels=4, head_width=8, head_layers=2, head_first_kernel=3,
                                    head_kernel=3, head_frames=1, batch_size=4, steps=STEPS, seed=6)
    return VideoRnnFamily(config, clips), _trainer_config(config)


FAMILIES: dict[str, FamilyEntry] = {
    "image_gan": FamilyEntry("models.image_gan", _image_gan("dcgan")),
    "image_gan-wgan_gp": FamilyEntry("models.image_gan", _image_gan("wgan-gp")),
    "music_vae": FamilyEntry("models.music_vae", _music_vae("chorale")),
    "painting_gan": FamilyEntry("models.painting_gan", _painting_gan),
    "video_rnn": FamilyEntry("models.video_rnn", _video_rnn),
}


def skip_unless_present(module: str) -> None:
    """pytest.importorskip, but only for a module that is not there: a broken one must fail."""
    import importlib.util

    import pytest

    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} does not exist (yet)")
    importlib.import_module(module)


def build(name: str):
    entry = FAMILIES[name]
    importlib.import_module(entry.module)
    return entry.build()
