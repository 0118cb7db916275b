"""The flat MusicVAE: a bidirectional LSTM encoder whose last forward and backward states give the
Gaussian posterior (mu, softplus sigma), and an autoregressive LSTM decoder whose initial state
comes from z and whose every input is [previous tokens' embeddings, z].

For V voices (4 for chorales) the encoder reads the concatenated embeddings of the voices at each
step; the decoder predicts V factorised 130-way distributions per step (the voices are
independent given the decoder state, which has seen every voice's previous tokens).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.music_vae.config import MusicVaeConfig
from models.music_vae.tokens import NUM_CLASSES

START = NUM_CLASSES  # the decoder's input before the first step: an extra embedding row
MIN_SIGMA = 1e-4  # keeps log(sigma) finite when softplus underflows


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
