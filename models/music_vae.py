"""Music VAE family: MusicVAE-style (Roberts et al. 2018) VAE over 2-bar token windows.

One model serves both corpus tables, chosen by `MusicVaeConfig.kind`:

- "melody": one voice, tokens (32,) over 130 classes (0..127 note-on, NOTE_OFF, HOLD);
- "chorale": four voices (soprano..bass), tokens (4, 32) in the same scheme. The encoder reads
  the concatenated embeddings of the 4 voices at each step; the decoder predicts 4
  factorised 130-way distributions per step (the voices are independent given the decoder
  state, which has seen every voice's previous tokens).

Network (the flat MusicVAE): a bidirectional LSTM encoder whose last forward and backward
states give the Gaussian posterior (mu, softplus sigma); an autoregressive LSTM decoder whose
initial state comes from z and whose every input is [previous tokens' embeddings, z].
Training: teacher forcing with scheduled sampling (inverse-sigmoid schedule, as Magenta's
`sampling_rate`), KL with free bits (free nats = free_bits * ln 2, per sequence) and
beta annealed as (1 - beta_rate**step) * max_beta, gradient clipping, Adam with an
exponentially decaying learning rate; transposition augmentation per window.

The token constants live here, not in corpora/midi.py, because the registered pyfunc runs
with only models/ on its path; they are also written into every bundle. This module must
not import corpora/, dagster, or models.trainer at module level.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.champion import ChampionRule, Guard
from models.family_config import FamilyConfig

BUNDLE_FORMAT = "atelier.music_vae/1"

# The token scheme of corpora/midi.py (MusicVAE's melody encoding).
NUM_PITCHES = 128
NOTE_OFF = 128
HOLD = 129
NUM_CLASSES = 130
START = NUM_CLASSES  # the decoder's input before the first step: an extra embedding row
STEPS_PER_QUARTER = 4  # 16th-note steps
DEFAULT_QPM = 120.0
DEFAULT_VELOCITY = 80
VOICE_NAMES = {1: ("melody",), 4: ("soprano", "alto", "tenor", "bass")}
KINDS = {"melody": 1, "chorale": 4}  # kind -> voices
MIN_SIGMA = 1e-4  # keeps log(sigma) finite when softplus underflows
SAMPLE_CHUNK = 512  # sequences per decoder pass when sampling, to bound memory
# What a listener hears: the gallery samples at this temperature, and the evaluation measures
# prior samples at it too, so the musical statistics describe the gallery's music.
GALLERY_TEMPERATURE = 1.0


# --- configuration -----------------------------------------------------------------------


@dataclass
class MusicVaeConfig(FamilyConfig):
    kind: str = "chorale"  # "melody" | "chorale"
    steps_per_window: int = 32  # 2 bars of 16ths
    embed_dim: int = 32  # per voice
    encoder_hidden: int = 256  # per direction
    decoder_hidden: int = 256
    decoder_layers: int = 2
    latent_dim: int = 64
    max_beta: float = 0.2
    beta_rate: float = 0.999  # beta = (1 - beta_rate**step) * max_beta; 0 = constant max_beta
    free_bits: float = 32.0  # per sequence: no KL pressure below this many bits
    sampling_rate: float = 250.0  # inverse-sigmoid k: p(step) = 1 - k / (k + exp(step / k)); 0 = teacher forcing only
    transpose_range: int = 5  # each window is moved by a uniform shift in [-range, range] semitones
    lr: float = 1e-3
    lr_decay: float = 0.9999  # per step, as Magenta
    min_lr: float = 1e-5
    grad_clip: float = 1.0
    batch_size: int = 64
    steps: int = 1500
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, not {self.kind!r}")
        if self.transpose_range < 0 or self.free_bits < 0 or self.max_beta < 0:
            raise ValueError("transpose_range, free_bits and max_beta must not be negative")

    @property
    def voices(self) -> int:
        return KINDS[self.kind]

    @classmethod
    def profile(cls, name: str, **overrides) -> "MusicVaeConfig":
        values = dict(PROFILES[name])
        values.update(overrides)
        return cls(**values)


PROFILES: dict[str, dict] = {
    # about 3 minutes on one busy CPU core on the chorale shards (~0.2 s a step; see the report)
    "demo": dict(embed_dim=32, encoder_hidden=128, decoder_hidden=192, decoder_layers=1, latent_dim=64,
                 batch_size=64, steps=900, sampling_rate=200.0, beta_rate=0.997),
    # Magenta's cat-mel_2bar_small sizes, still CPU-trainable in about half an hour
    "cpu-long": dict(embed_dim=64, encoder_hidden=512, decoder_hidden=256, decoder_layers=2, latent_dim=128,
                     batch_size=128, steps=8000, sampling_rate=1000.0, beta_rate=0.9995),
    "gpu": dict(embed_dim=64, encoder_hidden=1024, decoder_hidden=1024, decoder_layers=2, latent_dim=256,
                batch_size=512, steps=30000, sampling_rate=2000.0, beta_rate=0.9999),
}


def sampling_probability(config: MusicVaeConfig, step: int) -> float:
    """Inverse-sigmoid schedule (Bengio et al. 2015, as Magenta): starts near 0, rises to 1."""
    k = config.sampling_rate
    if k <= 0:
        return 0.0
    return 1.0 - k / (k + math.exp(min(step / k, 700.0)))  # 700: exp overflows past ~709


def kl_beta(config: MusicVaeConfig, step: int) -> float:
    return (1.0 - config.beta_rate**step) * config.max_beta


# --- networks ----------------------------------------------------------------------------


class VoiceEmbedding(nn.Module):
    """One embedding table per voice (plus a START row each); a step's vector is their concatenation."""

    def __init__(self, voices: int, dim: int):
        super().__init__()
        self.voices, self.rows = voices, NUM_CLASSES + 1
        self.table = nn.Embedding(voices * self.rows, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (..., V) -> (..., V * dim)"""
        offsets = torch.arange(self.voices, device=tokens.device) * self.rows
        return self.table(tokens + offsets).flatten(-2)


class Encoder(nn.Module):
    def __init__(self, config: MusicVaeConfig):
        super().__init__()
        self.embed = VoiceEmbedding(config.voices, config.embed_dim)
        self.lstm = nn.LSTM(config.voices * config.embed_dim, config.encoder_hidden, batch_first=True, bidirectional=True)
        self.to_posterior = nn.Linear(2 * config.encoder_hidden, 2 * config.latent_dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, V, T) -> mu, sigma (B, Z)"""
        _, (h, _) = self.lstm(self.embed(tokens.transpose(1, 2)))
        mu, pre_sigma = self.to_posterior(torch.cat([h[-2], h[-1]], dim=-1)).chunk(2, dim=-1)
        return mu, F.softplus(pre_sigma) + MIN_SIGMA


class Decoder(nn.Module):
    def __init__(self, config: MusicVaeConfig):
        super().__init__()
        self.voices, self.layers, self.hidden = config.voices, config.decoder_layers, config.decoder_hidden
        self.embed = VoiceEmbedding(config.voices, config.embed_dim)
        self.to_state = nn.Linear(config.latent_dim, 2 * self.layers * self.hidden)
        self.lstm = nn.LSTM(config.voices * config.embed_dim + config.latent_dim, self.hidden,
                            num_layers=self.layers, batch_first=True)
        self.out = nn.Linear(self.hidden, config.voices * NUM_CLASSES)

    def initial_state(self, z: torch.Tensor):
        h, c = torch.tanh(self.to_state(z)).view(z.size(0), 2, self.layers, self.hidden).permute(1, 2, 0, 3)
        return h.contiguous(), c.contiguous()

    def run(self, inputs: torch.Tensor, z: torch.Tensor, state):
        """inputs (B, S, V) previous tokens -> logits (B, S, V, C), new state."""
        x = torch.cat([self.embed(inputs), z[:, None, :].expand(-1, inputs.size(1), -1)], dim=-1)
        y, state = self.lstm(x, state)
        return self.out(y).unflatten(-1, (self.voices, NUM_CLASSES)), state


def shift_right(targets: torch.Tensor) -> torch.Tensor:
    """(B, V, T) targets -> (B, T, V) decoder inputs: START, then targets[..., :-1]."""
    start = torch.full_like(targets[..., :1], START)
    return torch.cat([start, targets[..., :-1]], dim=-1).transpose(1, 2)


def pick_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy (temperature <= 0) or sampled tokens from logits (..., C)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    flat = probs.reshape(-1, probs.size(-1))
    return torch.multinomial(flat.cpu(), 1, generator=generator).view(probs.shape[:-1]).to(logits.device)


class MusicVae(nn.Module):
    def __init__(self, config: MusicVaeConfig):
        super().__init__()
        self.config = config
        self.encoder, self.decoder = Encoder(config), Decoder(config)

    def decode_teacher_forced(self, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V, C) with the true previous tokens as inputs, in one LSTM pass."""
        logits, _ = self.decoder.run(shift_right(targets), z, self.decoder.initial_state(z))
        return logits

    def decode_scheduled(self, z: torch.Tensor, targets: torch.Tensor, probability: float,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V, C) where each step's input is, with `probability` per sequence and
        step, the decoder's own sample from the previous step instead of the truth.
        Also returns the inputs it used (B, T, V), so tests can see what was fed."""
        if probability <= 0:
            return self.decode_teacher_forced(z, targets), shift_right(targets)
        truth = shift_right(targets)
        state = self.decoder.initial_state(z)
        previous, all_logits, used = truth[:, 0], [], []
        for t in range(truth.size(1)):
            if t > 0:
                coin = torch.rand(truth.size(0), 1, device=z.device, generator=generator) < probability
                previous = torch.where(coin, own.detach(), truth[:, t])
            logits, state = self.decoder.run(previous[:, None], z, state)
            own = pick_tokens(logits[:, 0].detach(), 1.0, generator)
            all_logits.append(logits)
            used.append(previous)
        return torch.cat(all_logits, dim=1), torch.stack(used, dim=1)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Autoregressive decoding from z: tokens (B, V, T), int64."""
        state = self.decoder.initial_state(z)
        previous = torch.full((z.size(0), 1, self.config.voices), START, dtype=torch.long, device=z.device)
        steps = []
        for _ in range(self.config.steps_per_window):
            logits, state = self.decoder.run(previous, z, state)
            previous = pick_tokens(logits, temperature, generator)
            steps.append(previous[:, 0])
        return torch.stack(steps, dim=-1)


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) per sequence, in nats."""
    return 0.5 * (mu.pow(2) + sigma.pow(2) - 1.0 - 2.0 * sigma.log()).sum(-1)


def reconstruction_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sequence (summed over steps and voices), nats; logits (B,T,V,C), targets (B,V,T)."""
    ce = F.cross_entropy(logits.float().flatten(0, 2), targets.transpose(1, 2).reshape(-1), reduction="none")
    return ce.view(targets.size(0), -1).sum(-1)


# --- tokens and augmentation -------------------------------------------------------------


def as_voices(tokens, voices: int) -> np.ndarray:
    """uint8 (N, T) or (N, V, T) windows -> (N, V, T), checked against the token range."""
    tokens = np.asarray(tokens)
    if tokens.ndim == 2 and voices == 1:
        tokens = tokens[:, None, :]
    if tokens.ndim != 3 or tokens.shape[1] != voices:
        raise ValueError(f"expected windows shaped (N, {voices}, T) or (N, T) for one voice, got {tokens.shape}")
    if tokens.size and int(tokens.max()) >= NUM_CLASSES:
        raise ValueError(f"tokens must lie in 0..{NUM_CLASSES - 1}")
    return tokens


def transpose(tokens: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each window (B, V, T) by a uniform number of semitones in [-max_shift, max_shift],
    narrowed per window so every pitch stays in 0..127. NOTE_OFF and HOLD never move."""
    if max_shift <= 0:
        return tokens
    is_pitch = tokens < NUM_PITCHES
    flat = tokens.flatten(1)
    pitch_mask = is_pitch.flatten(1)
    highest = torch.where(pitch_mask, flat, -1).amax(1)
    lowest = torch.where(pitch_mask, flat, NUM_PITCHES).amin(1)
    has_notes = pitch_mask.any(1)
    down = torch.where(has_notes, torch.clamp(lowest, max=max_shift), 0)  # room below, capped
    up = torch.where(has_notes, torch.clamp(NUM_PITCHES - 1 - highest, max=max_shift), 0)
    u = torch.rand(tokens.size(0), device=tokens.device, generator=generator)
    shift = (u * (up + down + 1)).floor().long() - down
    return torch.where(is_pitch, tokens + shift[:, None, None], tokens)


# --- the family --------------------------------------------------------------------------


class MusicVaeFamily:
    """Trainer interface (models.trainer.Family) for the music VAE, on in-memory uint8 windows:
    (N, 32) melody tokens or (N, 4, 32) chorale voices."""

    def __init__(self, config: MusicVaeConfig, tokens):
        tokens = as_voices(tokens, config.voices)
        if tokens.shape[2] != config.steps_per_window:
            raise ValueError(f"windows have {tokens.shape[2]} steps, the config says {config.steps_per_window}")
        self.config = config
        self.tokens = torch.as_tensor(np.array(tokens, dtype=np.uint8))  # a copy torch may own
        self.num_items = len(self.tokens)
        torch.manual_seed(config.seed)  # the initial weights are part of the run's identity
        self.model = MusicVae(config)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        floor = config.min_lr / config.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: max(config.lr_decay**step, floor))

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": self.optimizer}

    def schedulers(self) -> dict[str, Any]:
        return {"vae": self.scheduler}

    def to(self, device: torch.device, channels_last: bool) -> None:
        self.model.to(device)  # no convolutions: channels_last does not apply

    def make_batch(self, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        from models.trainer import to_device  # not at the top: the registered pyfunc ships without trainer's imports

        batch = self.tokens[indices.cpu()].long()
        return to_device(transpose(batch, self.config.transpose_range), device)

    def train_step(self, batch: torch.Tensor, step: int, autocast) -> dict[str, float]:
        cfg = self.config
        self.model.train()
        probability, beta = sampling_probability(cfg, step), kl_beta(cfg, step)
        with autocast():
            mu, sigma = self.model.encoder(batch)
            z = mu + sigma * torch.randn_like(sigma)
            logits, _ = self.model.decode_scheduled(z, batch, probability)
        recon = reconstruction_nll(logits, batch)
        kl = kl_divergence(mu.float(), sigma.float())
        free_nats = cfg.free_bits * math.log(2.0)
        loss = (recon + beta * torch.clamp(kl - free_nats, min=0.0)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        tokens_per_sequence = cfg.voices * cfg.steps_per_window
        accuracy = (logits.argmax(-1) == batch.transpose(1, 2)).float().mean()
        return {"loss": loss.item(), "recon_nats_per_token": recon.mean().item() / tokens_per_sequence,
                "kl_bits": kl.mean().item() / math.log(2.0), "beta": beta, "sampling_probability": probability,
                "accuracy": accuracy.item(), "grad_norm": float(grad_norm)}


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
def decode(model: MusicVae, z: torch.Tensor, temperature: float = 0.0, seed: int = 0) -> np.ndarray:
    """uint8 windows from latents: (N, T) for melody, (N, V, T) for chorale. temperature 0 = greedy."""
    model.eval()
    generator = torch.Generator().manual_seed(int(seed))
    device = next(model.parameters()).device
    parts = [model.generate(z[i : i + SAMPLE_CHUNK].to(device), temperature, generator) for i in range(0, len(z), SAMPLE_CHUNK)]
    tokens = torch.cat(parts) if parts else torch.zeros(0, model.config.voices, model.config.steps_per_window, dtype=torch.long)
    return _squeeze_voices(model, tokens)


def sample(model: MusicVae, n: int, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
    """n new windows from the prior; the same seed and temperature always give the same windows."""
    generator = torch.Generator().manual_seed(int(seed))  # CPU: the same seed gives the same music on any device
    z = torch.randn(n, model.config.latent_dim, generator=generator)
    return decode(model, z, temperature, seed=seed)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation: Gaussian latents live near a sphere, a straight line cuts inside it."""
    cos = (a * b).sum(-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True)).clamp_min(1e-12)
    omega = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    t = t[:, None]
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


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


# --- tokens <-> MIDI ---------------------------------------------------------------------


def tokens_to_notes(tokens) -> list[tuple[int, int, int]]:
    """(pitch, onset_step, duration_steps) per note-on of one voice's tokens. A note lasts until
    the next note-on or NOTE_OFF, or to the end; leading HOLDs are silence."""
    tokens = np.asarray(tokens)
    events = [i for i, token in enumerate(tokens) if token != HOLD]
    ends = events[1:] + [len(tokens)]
    return [(int(tokens[s]), s, e - s) for s, e in zip(events, ends) if tokens[s] < NUM_PITCHES]


def step_seconds(qpm: float = DEFAULT_QPM) -> float:
    return 60.0 / qpm / STEPS_PER_QUARTER


def tokens_to_midi(tokens, qpm: float = DEFAULT_QPM, programs: Sequence[int] | None = None,
                   velocity: int = DEFAULT_VELOCITY):
    """A pretty_midi.PrettyMIDI of one window: (T,) one voice, or (V, T), one instrument per voice."""
    import pretty_midi

    voices = np.atleast_2d(np.asarray(tokens))
    names = VOICE_NAMES.get(len(voices), tuple(f"voice {i}" for i in range(len(voices))))
    programs = list(programs) if programs is not None else [0] * len(voices)
    midi = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    dt = step_seconds(qpm)
    for voice, name, program in zip(voices, names, programs):
        instrument = pretty_midi.Instrument(program=int(program), name=name)
        for pitch, onset, duration in tokens_to_notes(voice):
            instrument.notes.append(pretty_midi.Note(velocity=velocity, pitch=pitch, start=onset * dt, end=(onset + duration) * dt))
        midi.instruments.append(instrument)
    return midi


def tokens_to_midi_bytes(tokens, qpm: float = DEFAULT_QPM, programs: Sequence[int] | None = None) -> bytes:
    buffer = io.BytesIO()
    tokens_to_midi(tokens, qpm, programs).write(buffer)
    return buffer.getvalue()


def _voice_tokens(notes: list[tuple[int, int, int]], steps: int) -> np.ndarray:
    """One voice's tokens from (pitch, onset, end) steps: the highest sounding note wins a step."""
    top = np.full(steps, -1, dtype=np.int64)
    struck = np.zeros(steps, dtype=bool)
    for pitch, onset, end in notes:
        onset, end = max(onset, 0), min(end, steps)
        if end > onset:
            top[onset:end] = np.maximum(top[onset:end], pitch)
    for pitch, onset, _ in notes:
        if 0 <= onset < steps and top[onset] == pitch:
            struck[onset] = True
    tokens = np.full(steps, HOLD, dtype=np.uint8)
    previous = np.concatenate([[-1], top[:-1]])
    note_on = (top >= 0) & ((top != previous) | struck)
    tokens[note_on] = top[note_on]
    tokens[(top < 0) & (previous >= 0)] = NOTE_OFF
    return tokens


def midi_bytes_to_tokens(data: bytes, voices: int = 1, steps: int = 32) -> np.ndarray:
    """The first `steps` 16th steps of a MIDI file as tokens: (steps,) for one voice (the skyline
    of every non-drum note) or (voices, steps), one voice per instrument, highest mean pitch
    first (the `voices` instruments with most notes; missing voices are silent)."""
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(io.BytesIO(data))
    ticks_per_step = midi.resolution / STEPS_PER_QUARTER

    def to_steps(instrument) -> list[tuple[int, int, int]]:
        out = []
        for note in instrument.notes:
            onset = int(round(midi.time_to_tick(note.start) / ticks_per_step))
            end = max(int(round(midi.time_to_tick(note.end) / ticks_per_step)), onset + 1)
            out.append((note.pitch, onset, end))
        return out

    parts = [to_steps(i) for i in midi.instruments if not i.is_drum and i.notes]
    if voices == 1:
        return _voice_tokens([note for part in parts for note in part], steps)
    parts = sorted(parts, key=len, reverse=True)[:voices]
    parts.sort(key=lambda part: -np.mean([pitch for pitch, _, _ in part]))
    rows = [_voice_tokens(part, steps) for part in parts]
    rows += [np.full(steps, HOLD, dtype=np.uint8)] * (voices - len(rows))
    return np.stack(rows)


# --- export for the registry -------------------------------------------------------------


def export_bundle(*families: MusicVaeFamily, steps: dict[str, int] | None = None) -> dict:
    """One or more trained families (at most one per kind) as tensors and plain values, so
    torch.load(weights_only=True) reads it; the token scheme travels with the weights."""
    models = {}
    for family in families:
        kind = family.config.kind
        if kind in models:
            raise ValueError(f"two {kind} models in one bundle")
        state = {k: v.detach().cpu() for k, v in family.model.state_dict().items()}
        models[kind] = {"config": family.config.to_dict(), "state_dict": state, "step": (steps or {}).get(kind)}
    return {"format": BUNDLE_FORMAT, "models": models,
            "tokens": {"num_pitches": NUM_PITCHES, "note_off": NOTE_OFF, "hold": HOLD, "num_classes": NUM_CLASSES,
                       "steps_per_quarter": STEPS_PER_QUARTER, "qpm": DEFAULT_QPM}}


def save_bundle(bundle: dict, path: str | Path) -> Path:
    from corpora.atomic import atomic_write  # training side only; the pyfunc never writes

    return atomic_write(path, lambda file: torch.save(bundle, file))


def load_bundle(path: str | Path) -> dict:
    bundle = torch.load(path, map_location="cpu", weights_only=True)
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"not a music VAE bundle: format {bundle.get('format')!r}")
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


# --- command line: `python -m models.music_vae --kind chorale --run-dir runs/x` -------------


def load_windows(manifest: Path, kind: str) -> dict[str, np.ndarray]:
    """Train and held-out windows of one kind from a MIDI shard manifest (split by piece)."""
    from corpora.ingest import shard_paths
    from corpora.shards import read_shards, tensors_from_table

    table_name, column = ("melody_windows", "tokens") if kind == "melody" else ("chorale_windows", "voices")
    table = read_shards(shard_paths(manifest, table_name), columns=[column, "split"])
    tokens = tensors_from_table(table, column)
    split = np.asarray(table.column("split").to_pylist())
    return {name: tokens[split == name] for name in ("train", "heldout")}


def main(argv: Sequence[str] | None = None) -> dict:
    """Train on the shards of a MIDI manifest into a run folder (resuming if it holds
    checkpoints), write bundle.pt and print the held-out report."""
    parser = argparse.ArgumentParser(prog="python -m models.music_vae", description=main.__doc__)
    parser.add_argument("--manifest", type=Path, default=Path("data/shards/midi/manifest.json"))
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--kind", default="chorale", choices=sorted(KINDS))
    parser.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    parser.add_argument("--steps", type=int)
    parser.add_argument("--max-seconds", type=float)
    # 1: on a shared 2-core machine, 2 intra-op threads spin against other work (measured 10x slower)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, help="samples for the musical statistics (default: EVAL_SAMPLES)")
    args = parser.parse_args(argv)

    from models import music_metrics
    from models.trainer import fit

    torch.set_num_threads(args.threads)
    data = load_windows(args.manifest, args.kind)
    overrides = {"steps": args.steps} if args.steps else {}
    config = MusicVaeConfig.profile(args.profile, kind=args.kind, **overrides)
    family = MusicVaeFamily(config, data["train"])

    def log(step: int, metrics: dict) -> None:
        print(json.dumps({"step": step, **{k: round(v, 4) for k, v in metrics.items()}}), file=sys.stderr, flush=True)

    trainer_overrides = {"max_seconds": args.max_seconds} if args.max_seconds else {}
    result = fit(family, config.trainer_config(**trainer_overrides), args.run_dir, torch.device(args.device), log=log,
                 checkpoint_extra={"family": "music_vae", "config": config.to_dict()})
    save_bundle(export_bundle(family, steps={config.kind: result.step}), args.run_dir / "bundle.pt")
    family.model.cpu()
    samples = {"n_samples": args.samples} if args.samples else {}
    report = music_metrics.evaluate(family.model, data["train"], data["heldout"], seed=config.seed, **samples)
    print(music_metrics.format_report(report), flush=True)
    summary = {"step": result.step, "finished": result.finished, "seconds": round(result.seconds, 1),
               "train_windows": len(data["train"]), "heldout_windows": len(data["heldout"])}
    print(json.dumps(summary), flush=True)
    return {**summary, "report": report}



# --- the shared entry point's run (python -m models.train --family music-vae) ----------------

# -ELBO per token bounds the held-out NLL, so weak KL pressure cannot buy it the way it buys
# reconstruction accuracy; the guard keeps the music drawn from the prior from getting worse.
# Both are averaged over the bundle's kinds.
CHAMPION_RULE = ChampionRule("neg_elbo_per_token", higher_is_better=False,
                             guards=(Guard("prior_statistics_overlap", higher_is_better=True, tolerance=0.02),))
CHAMPION_METRIC = CHAMPION_RULE.metric
# the rule's two numbers, the real-vs-real reference beside the guard, and the accuracy the run summary prints
AVERAGED_OVER_KINDS = ("neg_elbo_per_token", "prior_statistics_overlap", "heldout_vs_train_statistics_overlap",
                       "sampled_accuracy")


def kind_summary(report: dict) -> dict[str, float]:
    """One kind's numbers for the training outcome's summary (flat, as MLflow metrics)."""
    model_row = {name: value for name, value in report["likelihood"]["model"].items() if isinstance(value, (int, float))}
    return {**model_row, "unigram_true_nll_per_token": report["likelihood"]["unigram"]["true_nll_per_token"],
            "prior_statistics_overlap": report["prior_statistics_overlap"],
            "heldout_vs_train_statistics_overlap": report["heldout_vs_train_statistics_overlap"]}


def run_training(request, run):
    """Train each kind of `request.model_config` ({kind: config}) on the manifest's windows,
    evaluate each on its held-out pieces, and export one bundle holding all of them."""
    from models import music_metrics
    from models.train import TrainingOutcome

    start = load_bundle(request.init_from)["models"] if request.init_from else {}
    families, steps, reports, summary, resumed, seconds = [], {}, {}, {}, {}, 0.0
    for kind, values in request.model_config.items():
        config = MusicVaeConfig.from_dict(values)
        data = load_windows(run.manifest, kind)
        family = MusicVaeFamily(config, data["train"])
        if kind in start:
            family.model.load_state_dict(start[kind]["state_dict"])
            run.report.log(f"{kind}: starting from the weights in {request.init_from}")

        def log(step: int, values: dict, kind=kind) -> None:
            run.report.metrics(step, {f"{kind}.{name}": value for name, value in values.items()})

        result = run.fit(family, config, request, run_dir=run.run_dir / kind, log=log, extra={"family": "music_vae"})
        families.append(family)
        steps[kind], resumed[kind], seconds = result.step, result.resumed_from, seconds + result.seconds
        if not run.distributed.is_main:
            continue
        family.model.cpu()
        report = music_metrics.evaluate(family.model, data["train"], data["heldout"], seed=request.seed,
                                        n_samples=request.options.get("eval_samples", music_metrics.EVAL_SAMPLES),
                                        temperature=GALLERY_TEMPERATURE)
        reports[kind] = report
        summary.update({f"{kind}.{name}": value for name, value in kind_summary(report).items()})
        summary[f"{kind}.train_seconds"] = result.seconds
    if not run.distributed.is_main:
        return None
    for name in AVERAGED_OVER_KINDS:
        summary[name] = float(np.mean([summary[f"{kind}.{name}"] for kind in reports]))
    score = summary[CHAMPION_METRIC]
    bundle = save_bundle(export_bundle(*families, steps=steps), run.run_dir / "bundle.pt")
    return TrainingOutcome(
        bundle=str(bundle), checkpoint=str(result.checkpoint), step=max(steps.values()),
        resumed_from=max(resumed.values()), train_seconds=seconds, score=score, summary=summary,
        report_markdown="\n\n".join(music_metrics.format_report(report) for report in reports.values()),
        details={"steps_per_kind": steps},
    )


if __name__ == "__main__":
    main()
