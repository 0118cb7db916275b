"""A bundle's models, and what they make: encode, decode, sample from the prior, interpolate.

This is what the registered pyfunc runs: it imports neither the metrics nor the training side.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.bundle import load_bundle as load_bundle_file
from models.generators import latents, slerp
from models.music_vae.config import MusicVaeConfig
from models.music_vae.network import RHYTHM_TEMPERATURE, MusicVae
from models.music_vae.tokens import HOLD, NOTE_OFF, NUM_CLASSES, STEPS_PER_QUARTER, as_voices

BUNDLE_FORMAT = "atelier.music_vae/2"  # /1: the voices of a step drawn independently
SAMPLE_CHUNK = 512  # sequences per decoder pass when sampling, to bound memory
# What a listener hears: the gallery and the registered model sample at this temperature (Magenta's
# default), and the evaluation measures prior samples at it too, so the musical statistics describe
# the gallery's music.
GALLERY_TEMPERATURE = 0.5  # of the pitches; when notes start and end, network.RHYTHM_TEMPERATURE
# The gallery and the registered model draw no consecutive fifths or octaves between voices, nor
# hidden ones in the outer voices: a rule of the sampling, not the model's (docs/music-vae.md measures both)
GALLERY_FORBIDS_CONSECUTIVES = True
STEPS_PER_BAR = 4 * STEPS_PER_QUARTER  # 4/4, as the corpus's windows
MAX_PHRASE_BARS = 8  # the longest phrase `sample` makes (and docs/music-vae.md measures)
GALLERY_BARS = MAX_PHRASE_BARS  # the gallery's phrases, and the evaluation's longer prior samples
# A longer phrase's latents walk: each window's latent is this correlated with the one before
# (z' = rho z + sqrt(1 - rho^2) e keeps every latent N(0, I)); docs/music-vae.md measures it.
LATENT_WALK_CORRELATION = 0.8


# --- bundles -----------------------------------------------------------------------------


def load_bundle(path: str | Path) -> dict:
    """A music VAE bundle, read weights-only, whose token scheme is this code's."""
    bundle = load_bundle_file(path, (BUNDLE_FORMAT,))
    scheme = bundle["tokens"]
    if (scheme["note_off"], scheme["hold"], scheme["num_classes"]) != (NOTE_OFF, HOLD, NUM_CLASSES):
        raise ValueError(f"the bundle's token scheme {scheme} is not this code's")
    return bundle


def load_model(bundle: dict | str | Path, kind: str | None = None) -> MusicVae:
    """The bundle's model of `kind` (default: its only or first one), on CPU, in eval mode."""
    if not isinstance(bundle, dict):
        bundle = load_bundle(bundle)
    kind = kind or next(iter(bundle["models"]))
    if kind not in bundle["models"]:
        raise ValueError(f"the bundle has no {kind!r} model; it has {sorted(bundle['models'])}")
    entry = bundle["models"][kind]
    model = MusicVae(MusicVaeConfig.from_dict(entry["config"]))
    model.load_state_dict(entry["state_dict"])
    return model.eval()


# --- encode, decode, sample, interpolate -------------------------------------------------


def _voices_tensor(model: MusicVae, tokens) -> torch.Tensor:
    tokens = np.asarray(tokens)
    if tokens.ndim == (1 if model.config.voices == 1 else 2):  # a single window
        tokens = tokens[None]
    device = next(model.parameters()).device
    return torch.as_tensor(as_voices(tokens, model.config.voices).astype(np.int64), device=device)


@torch.no_grad()
def encode(model: MusicVae, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and sigma (N, Z) of windows (N, T) / (N, V, T), or of one window."""
    model.eval()
    return model.encoder(_voices_tensor(model, tokens))


def _squeeze_voices(model: MusicVae, tokens: torch.Tensor) -> np.ndarray:
    out = tokens.to(torch.uint8).cpu().numpy()
    return out[:, 0] if model.config.voices == 1 else out  # melody: (N, T) as the corpus stores it


@torch.no_grad()
def decode(model: MusicVae, z: torch.Tensor, temperature: float = 0.0, seed: int = 0,
           forbid_consecutives: bool = False, rhythm_temperature: float = RHYTHM_TEMPERATURE) -> np.ndarray:
    """uint8 windows from latents z (N, Z): (N, T) for melody, (N, V, T) for chorale; temperature 0 =
    greedy. Latents (N, K, Z) give phrases of K windows, (N, K * T) or (N, V, K * T).
    `forbid_consecutives`: no consecutive fifths or octaves, nor hidden ones in the outer voices
    (MusicVae.generate).
    `temperature` chooses the pitches, `rhythm_temperature` when notes start and end (network.token_probabilities)."""
    if not rhythm_temperature > 0:
        raise ValueError(f"rhythm_temperature must be above 0, not {rhythm_temperature!r}")
    model.eval()
    generator = torch.Generator().manual_seed(int(seed))
    device = next(model.parameters()).device
    parts = [model.generate(z[i : i + SAMPLE_CHUNK].to(device), temperature, generator, forbid_consecutives,
                            rhythm_temperature)
             for i in range(0, len(z), SAMPLE_CHUNK)]
    windows = 1 if z.dim() == 2 else z.size(1)
    empty = torch.zeros(0, model.config.voices, windows * model.config.steps_per_window, dtype=torch.long)
    return _squeeze_voices(model, torch.cat(parts) if parts else empty)


def latent_walk(n: int, windows: int, latent_dim: int, seed: int,
                correlation: float = LATENT_WALK_CORRELATION) -> torch.Tensor:
    """(n, windows, Z) latents from the prior, each window's correlated with the one before."""
    noise = latents(n * windows, latent_dim, seed).view(windows, n, latent_dim)
    walk = [noise[0]]
    for step in noise[1:]:
        walk.append(correlation * walk[-1] + (1.0 - correlation**2) ** 0.5 * step)
    return torch.stack(walk, dim=1)


def window_bars(model: MusicVae) -> float:
    return model.config.steps_per_window / STEPS_PER_BAR


def sample(model: MusicVae, n: int, seed: int = 0, temperature: float = GALLERY_TEMPERATURE,
           bars: float | None = None, forbid_consecutives: bool = False,
           rhythm_temperature: float = RHYTHM_TEMPERATURE) -> np.ndarray:
    """n new phrases of `bars` bars (default: one window's) from the prior; the same seed,
    temperatures, bars and rule always give the same phrases (the latents come from a CPU generator,
    so on any device). A phrase of several windows is decoded as one sequence along a latent walk.
    `forbid_consecutives`: no consecutive fifths or octaves, nor hidden ones in the outer voices
    (MusicVae.generate)."""
    bars = window_bars(model) if bars is None else bars
    windows = bars / window_bars(model)
    if not (windows == int(windows) and 1 <= windows and bars <= MAX_PHRASE_BARS):
        raise ValueError(f"bars must be a whole number of {window_bars(model):g}-bar windows, at most "
                         f"{MAX_PHRASE_BARS}; not {bars!r}")
    z = latent_walk(n, int(windows), model.config.latent_dim, seed)
    return decode(model, z if windows > 1 else z[:, 0], temperature, seed=seed, forbid_consecutives=forbid_consecutives,
                  rhythm_temperature=rhythm_temperature)


def interpolate(model: MusicVae, tokens_a, tokens_b, steps: int = 5, method: str = "slerp") -> np.ndarray:
    """`steps` windows from phrase a to phrase b: both are encoded (posterior means), the
    latents interpolated at t = 0..1 inclusive (so the ends are a's and b's reconstructions),
    each decoded greedily."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    mu_a, _ = encode(model, tokens_a)
    mu_b, _ = encode(model, tokens_b)
    t = torch.linspace(0, 1, steps, device=mu_a.device)
    if method == "slerp":
        z = slerp(mu_a, mu_b, t)
    elif method == "lerp":
        z = torch.lerp(mu_a, mu_b, t[:, None])
    else:
        raise ValueError(f"method must be 'slerp' or 'lerp', not {method!r}")
    return decode(model, z, temperature=0.0)
