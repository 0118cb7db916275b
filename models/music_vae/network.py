"""The flat MusicVAE: a bidirectional LSTM encoder whose last forward and backward states give the
Gaussian posterior (mu, softplus sigma), and an autoregressive LSTM decoder whose initial state
comes from z and whose every input is [previous step's tokens' embeddings, z].

For V voices (4 for chorales) the encoder reads the concatenated embeddings of the voices at each
step. The decoder is autoregressive within a step too: voice v's distribution comes from the
LSTM's output and the embeddings of the same step's voices 0..v-1 (soprano, then alto given the
soprano, ...), through a small per-voice layer (`VoiceHeads`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.music_vae.config import MusicVaeConfig
from models.music_vae.tokens import HOLD, NOTE_OFF, NUM_CLASSES

START = NUM_CLASSES  # the decoder's input before the first step: an extra embedding row
MIN_SIGMA = 1e-4  # keeps log(sigma) finite when softplus underflows
# compound interval mod 12 -> its name: what two moving voices must not keep (metrics count them too)
PERFECT_INTERVALS = {7: "fifths", 0: "octaves"}
WHOLE_STEP = 2  # semitones: a top voice moving further leaps, and may not lead the bass into a perfect interval
# Sampling draws whether a voice strikes, releases or holds at this temperature, and which pitch it
# strikes at the request's: 1.0 keeps the model's own rhythm, where one low temperature for both
# made the chorales change chord half as often as Bach (docs/music-vae.md, "Rhythm at the model's odds")
RHYTHM_TEMPERATURE = 1.0


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


class VoiceHeads(nn.Module):
    """Per voice v: logits = out_v(relu(A_v y + B_v [embeddings of this step's voices before v])),
    y the decoder's output. B's blocks from a voice to itself or to a voice above it are masked to
    zero, so voice v never sees its own token or a later voice's."""

    def __init__(self, config: MusicVaeConfig):
        super().__init__()
        voices, hidden, embed = config.voices, config.voice_head_hidden, config.embed_dim
        self.voices = voices
        self.embed = VoiceEmbedding(voices, embed)
        self.from_decoder = nn.Linear(config.decoder_hidden, voices * hidden)
        self.from_voices = nn.Linear(voices * embed, voices * hidden, bias=False)
        earlier = torch.ones(voices, voices).tril(-1)  # [v, u]: u is above v
        self.register_buffer("seen", earlier.repeat_interleave(hidden, 0).repeat_interleave(embed, 1), persistent=False)
        bound = 1.0 / hidden**0.5  # as nn.Linear initialises its own
        self.out_weight = nn.Parameter(torch.empty(voices, hidden, NUM_CLASSES).uniform_(-bound, bound))
        self.out_bias = nn.Parameter(torch.empty(voices, NUM_CLASSES).uniform_(-bound, bound))

    def forward(self, y: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """y (B, S, H) decoder outputs, current (B, S, V) this step's tokens -> logits (B, S, V, C)."""
        heard = F.linear(self.embed(current), self.from_voices.weight * self.seen)
        hidden = torch.relu(self.from_decoder(y) + heard).unflatten(-1, (self.voices, -1))
        return torch.einsum("bsvh,vhc->bsvc", hidden, self.out_weight) + self.out_bias


class Decoder(nn.Module):
    def __init__(self, config: MusicVaeConfig):
        super().__init__()
        self.voices, self.layers, self.hidden = config.voices, config.decoder_layers, config.decoder_hidden
        self.embed = VoiceEmbedding(config.voices, config.embed_dim)
        self.to_state = nn.Linear(config.latent_dim, 2 * self.layers * self.hidden)
        self.lstm = nn.LSTM(config.voices * config.embed_dim + config.latent_dim, self.hidden,
                            num_layers=self.layers, batch_first=True)
        self.heads = VoiceHeads(config)

    def initial_state(self, z: torch.Tensor):
        h, c = torch.tanh(self.to_state(z)).view(z.size(0), 2, self.layers, self.hidden).permute(1, 2, 0, 3)
        return h.contiguous(), c.contiguous()

    def run(self, inputs: torch.Tensor, z: torch.Tensor, state):
        """inputs (B, S, V) previous steps' tokens -> LSTM outputs (B, S, H), new state."""
        x = torch.cat([self.embed(inputs), z[:, None, :].expand(-1, inputs.size(1), -1)], dim=-1)
        return self.lstm(x, state)

    def logits(self, inputs: torch.Tensor, current: torch.Tensor, z: torch.Tensor, state):
        """Teacher forcing within the steps: logits (B, S, V, C) given the previous steps' tokens
        `inputs` and, for each voice, the earlier voices of the step's own tokens `current` (B, S, V)."""
        y, state = self.run(inputs, z, state)
        return self.heads(y, current), state

    def sample_step(self, y: torch.Tensor, temperature: float, generator: torch.Generator | None = None,
                    sounding: torch.Tensor | None = None, rhythm_temperature: float = RHYTHM_TEMPERATURE
                    ) -> torch.Tensor:
        """One step's tokens (B, 1, V) from LSTM outputs (B, 1, H), voice by voice: each voice is
        drawn given the tokens already drawn for the voices before it. With `sounding`, the (B, V)
        pitches sounding before this step (-1: silent), no voice may make consecutive fifths or
        octaves with a voice drawn before it, nor the bass hidden ones with the soprano: those
        note-ons get no probability."""
        current = torch.zeros(*y.shape[:-1], self.voices, dtype=torch.long, device=y.device)
        now = None if sounding is None else sounding.clone()
        for voice in range(self.voices):
            logits = self.heads(y, current)[..., voice, :]
            if sounding is not None:
                forbidden = consecutive_note_ons(sounding, now, voice) | hidden_note_ons(sounding, now, voice)
                forbidden = F.pad(forbidden, (0, NUM_CLASSES - NOTE_OFF))
                logits = logits.masked_fill(forbidden[:, None], float("-inf"))
            current[..., voice] = pick_tokens(logits, temperature, generator, rhythm_temperature)
            if sounding is not None:
                now[:, voice] = next_sounding(sounding[:, voice], current[:, 0, voice])
        return current


def next_sounding(sounding: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The pitches sounding after `tokens` (-1: silent): a note-on's pitch, the same under HOLD."""
    return torch.where(tokens < NOTE_OFF, tokens, torch.where(tokens == HOLD, sounding, -1))


def consecutive_note_ons(before: torch.Tensor, now: torch.Tensor, voice: int) -> torch.Tensor:
    """(B, 128) mask of the note-ons (a note-on token is its pitch) that would give `voice`
    consecutive fifths or octaves with one of the voices before it: both voices sounding at both
    steps, both moving (the same way, as `metrics.parallel_motions` counts, or opposite ways, as
    `metrics.contrary_motions`), the same perfect interval class at both. before: (B, V) pitches
    sounding at the step before; now: (B, V), this step's, valid for the voices before `voice`."""
    pitches = torch.arange(NOTE_OFF, device=before.device)
    own = before[:, voice, None]
    forbidden = torch.zeros(before.size(0), NOTE_OFF, dtype=torch.bool, device=before.device)
    for other in range(voice):
        was, moved_to = before[:, other, None], now[:, other, None]
        interval = (was - own) % 12
        perfect = torch.isin(interval, torch.tensor(list(PERFECT_INTERVALS), device=before.device))
        forbidden |= ((was >= 0) & (own >= 0) & (moved_to >= 0) & (moved_to != was) & (pitches != own) & perfect
                      & ((moved_to - pitches) % 12 == interval))
    return forbidden


def hidden_note_ons(before: torch.Tensor, now: torch.Tensor, voice: int) -> torch.Tensor:
    """(B, 128) mask of the note-ons that would give hidden fifths or octaves in the outer voices,
    as `metrics.hidden_perfects` counts them: `voice` is the bass (the last of two or more), and
    with the soprano it would move the same way into a perfect interval class it did not hold
    before, the soprano by leap. before, now: as `consecutive_note_ons`."""
    if voice == 0 or voice != before.size(1) - 1:
        return torch.zeros(before.size(0), NOTE_OFF, dtype=torch.bool, device=before.device)
    pitches = torch.arange(NOTE_OFF, device=before.device)
    own, was, moved_to = before[:, voice, None], before[:, 0, None], now[:, 0, None]
    arriving = (moved_to - pitches) % 12
    perfect = torch.isin(arriving, torch.tensor(list(PERFECT_INTERVALS), device=before.device))
    same_way = torch.where(moved_to > was, pitches > own, pitches < own)
    return ((was >= 0) & (own >= 0) & (moved_to >= 0) & ((moved_to - was).abs() > WHOLE_STEP) & same_way
            & perfect & (arriving != (was - own) % 12))


def shift_right(targets: torch.Tensor) -> torch.Tensor:
    """(B, V, T) targets -> (B, T, V) decoder inputs: START, then targets[..., :-1]."""
    start = torch.full_like(targets[..., :1], START)
    return torch.cat([start, targets[..., :-1]], dim=-1).transpose(1, 2)


def pick_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None,
                rhythm_temperature: float = RHYTHM_TEMPERATURE) -> torch.Tensor:
    """Greedy (temperature <= 0) or sampled tokens from logits (..., C): see `token_probabilities`."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = token_probabilities(logits, temperature, rhythm_temperature)
    flat = probs.reshape(-1, probs.size(-1))
    return torch.multinomial(flat.cpu(), 1, generator=generator).view(probs.shape[:-1]).to(logits.device)


def token_probabilities(logits: torch.Tensor, temperature: float, rhythm_temperature: float) -> torch.Tensor:
    """(..., C) probabilities of the tokens: the kind of event (a note-on, NOTE_OFF, HOLD) at
    `rhythm_temperature`, the pitch of a note-on at `temperature`. Both equal: one softmax."""
    logits = logits.float()
    if temperature == rhythm_temperature:
        return F.softmax(logits / temperature, dim=-1)
    kinds = F.softmax(logits / rhythm_temperature, dim=-1)
    note_on = kinds[..., :NOTE_OFF].sum(-1, keepdim=True)
    # a voice with every pitch forbidden has no note-on mass, and its pitches' NaNs become 0
    pitches = F.softmax(logits[..., :NOTE_OFF] / temperature, dim=-1).nan_to_num(0.0)
    return torch.cat([note_on * pitches, kinds[..., NOTE_OFF:]], dim=-1)


class MusicVae(nn.Module):
    def __init__(self, config: MusicVaeConfig):
        super().__init__()
        self.config = config
        self.encoder, self.decoder = Encoder(config), Decoder(config)

    def decode_teacher_forced(self, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V, C) with the true previous tokens as inputs, in one LSTM pass."""
        logits, _ = self.decoder.logits(shift_right(targets), targets.transpose(1, 2), z, self.decoder.initial_state(z))
        return logits

    def decode_scheduled(self, z: torch.Tensor, targets: torch.Tensor, probability: float,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V, C) where each step's input is, with `probability` per sequence and
        step, the decoder's own sample from the previous step instead of the truth. Parallel
        scheduled sampling (Duckworth et al. 2019, one pass): a teacher-forced LSTM pass without
        gradients gives the own samples, drawn only where a coin replaced the truth (each voice
        given the true earlier voices of its step and the true steps before), then one pass over
        the mixed inputs gives the logits. Also returns the inputs it used (B, T, V), so tests
        can see what was fed."""
        truth = shift_right(targets)
        if probability <= 0:
            return self.decode_teacher_forced(z, targets), truth
        current = targets.transpose(1, 2)
        coin = torch.rand(truth.shape[:2], generator=generator).to(z.device) < probability
        coin[:, 0] = False  # the first input is always START
        used = truth.clone()
        if coin.any():
            with torch.no_grad():
                y, _ = self.decoder.run(truth, z, self.decoder.initial_state(z))
                sequence, step = coin.nonzero(as_tuple=True)  # step's input is the own sample of step - 1
                logits = self.decoder.heads(y[sequence, step - 1, None], current[sequence, step - 1, None])
                used[sequence, step] = pick_tokens(logits[:, 0], 1.0, generator)
        logits, _ = self.decoder.logits(used, current, z, self.decoder.initial_state(z))
        return logits, used

    @torch.no_grad()
    def generate(self, z: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
                 forbid_consecutives: bool = False, rhythm_temperature: float = RHYTHM_TEMPERATURE) -> torch.Tensor:
        """Autoregressive decoding from z: tokens (B, V, T), int64. Given one latent per window,
        z (B, K, Z), it decodes K windows as one phrase (B, V, K * T): the decoder starts from the
        first latent's state and goes on across window boundaries, its input switching to the
        next window's latent, so each window follows on from the one before. `forbid_consecutives`:
        no two voices make consecutive fifths or octaves, by parallel or contrary motion, nor the
        outer voices hidden ones (a rule of the sampling, not the model's: docs/music-vae.md
        measures both). `rhythm_temperature`: see `token_probabilities`."""
        windows = z[:, None] if z.dim() == 2 else z
        state = self.decoder.initial_state(windows[:, 0])
        previous = torch.full((z.size(0), 1, self.config.voices), START, dtype=torch.long, device=z.device)
        # the pitches sounding before each step, which the rule needs (-1: silent)
        sounding = (torch.full((z.size(0), self.config.voices), -1, dtype=torch.long, device=z.device)
                    if forbid_consecutives else None)
        steps = []
        for window in windows.unbind(1):
            for _ in range(self.config.steps_per_window):
                y, state = self.decoder.run(previous, window, state)
                previous = self.decoder.sample_step(y, temperature, generator, sounding, rhythm_temperature)
                if sounding is not None:
                    sounding = next_sounding(sounding, previous[:, 0])
                steps.append(previous[:, 0])
        return torch.stack(steps, dim=-1)


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) per sequence, in nats."""
    return 0.5 * (mu.pow(2) + sigma.pow(2) - 1.0 - 2.0 * sigma.log()).sum(-1)


def reconstruction_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sequence (summed over steps and voices), nats; logits (B,T,V,C), targets (B,V,T)."""
    ce = F.cross_entropy(logits.float().flatten(0, 2), targets.transpose(1, 2).reshape(-1), reduction="none")
    return ce.view(targets.size(0), -1).sum(-1)
