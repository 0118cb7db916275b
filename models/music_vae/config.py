"""The music VAE's settings and its named profiles."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from models.family_config import FamilyConfig

KINDS = {"melody": 1, "chorale": 4}  # kind -> voices (the corpus's melody_windows, chorale_windows)


@dataclass
class MusicVaeConfig(FamilyConfig):
    kind: str = "chorale"  # "melody" | "chorale"
    steps_per_window: int = 32  # 2 bars of 16ths
    embed_dim: int = 32  # per voice
    encoder_hidden: int = 256  # per direction
    decoder_hidden: int = 256
    decoder_layers: int = 2
    voice_head_hidden: int = 128  # the per-voice layer between the decoder and each voice's logits
    latent_dim: int = 64
    max_beta: float = 0.2
    beta_rate: float = 0.999  # beta = (1 - beta_rate**step) * max_beta; 0 = constant max_beta
    free_bits: float = 32.0  # per sequence: no KL pressure below this many bits
    sampling_rate: float = 250.0  # inverse-sigmoid k: p(step) = 1 - k / (k + exp(step / k)); 0 = teacher forcing only
    # each window moved by a uniform shift in [-range, range] semitones; 0: the corpus's own keys, which
    # kept the samples in key far better at both budgets (docs/music-vae.md, "The corpus's own keys")
    transpose_range: int = 0
    lr: float = 1e-3
    lr_decay: float = 0.9999  # per step, as Magenta
    min_lr: float = 1e-5
    grad_clip: float = 1.0
    batch_size: int = 64
    steps: int = 1500
    seed: int = 0

    PROFILES: ClassVar[dict[str, dict]] = {
        # about a minute per kind on one idle CPU core (docs/music-vae.md): the loss still falls at the
        # end, so the budget goes to steps (small batches, a narrow encoder) rather than width; half
        # the free bits: 900 steps do not put 32 bits of z to use ("Free bits for the demo's budget")
        "demo": dict(embed_dim=32, encoder_hidden=64, decoder_hidden=160, decoder_layers=1, latent_dim=64,
                     voice_head_hidden=64, batch_size=32, steps=900, lr=3e-3, lr_decay=0.9975,
                     sampling_rate=200.0, beta_rate=0.997, free_bits=16.0),
        # Magenta's cat-mel_2bar_small sizes at the demo's batch, its schedules stretched to 3.1x the
        # steps: about 20 minutes of one CPU core per kind (0.43 CPU s a chorale step)
        "cpu-long": dict(embed_dim=64, encoder_hidden=512, decoder_hidden=256, decoder_layers=2, latent_dim=128,
                         batch_size=32, steps=2800, lr=1e-3, lr_decay=0.9992, sampling_rate=620.0, beta_rate=0.999),
        "gpu": dict(embed_dim=64, encoder_hidden=1024, decoder_hidden=1024, decoder_layers=2, latent_dim=256,
                    batch_size=512, steps=30000, sampling_rate=2000.0, beta_rate=0.9999),
    }

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, not {self.kind!r}")
        if self.transpose_range < 0 or self.free_bits < 0 or self.max_beta < 0:
            raise ValueError("transpose_range, free_bits and max_beta must not be negative")

    @property
    def voices(self) -> int:
        return KINDS[self.kind]
