"""Training the music VAE: the trainer-interface Family, the bundle it exports, and
`run_training`, what `python -m models.train --family music-vae` runs.

Teacher forcing with scheduled sampling (inverse-sigmoid schedule, as Magenta's
`sampling_rate`), KL with free bits (free nats = free_bits * ln 2, per sequence) and beta
annealed as (1 - beta_rate**step) * max_beta, gradient clipping, Adam with an exponentially
decaying learning rate; each window is transposed by a random shift.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.batches import InMemoryRows, LoaderConfig, Rows
from models.bundle import save_bundle
from models.music_vae import FAMILY
from models.music_vae import metrics as music_metrics
from models.music_vae.config import MusicVaeConfig
from models.music_vae.network import MusicVae, kl_divergence, reconstruction_nll
from models.music_vae.sampling import BUNDLE_FORMAT, GALLERY_TEMPERATURE, load_bundle
from models.music_vae.tokens import NUM_PITCHES, as_voices, token_scheme
from models.trainer import to_device

# the rule's two numbers, the real-vs-real reference beside the guard, and the accuracy the run summary prints
AVERAGED_OVER_KINDS = ("neg_elbo_per_token", "prior_statistics_overlap", "heldout_vs_train_statistics_overlap",
                       "sampled_accuracy")
TABLES = {"melody": ("melody_windows", "tokens"), "chorale": ("chorale_windows", "voices")}  # kind -> shard table, column


def sampling_probability(config: MusicVaeConfig, step: int) -> float:
    """Inverse-sigmoid schedule (Bengio et al. 2015, as Magenta): starts near 0, rises to 1."""
    k = config.sampling_rate
    if k <= 0:
        return 0.0
    return 1.0 - k / (k + math.exp(min(step / k, 700.0)))  # 700: exp overflows past ~709


def kl_beta(config: MusicVaeConfig, step: int) -> float:
    return (1.0 - config.beta_rate**step) * config.max_beta


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
    """Trainer interface (models.trainer.Family) for the music VAE, on uint8 windows: (N, 32)
    melody tokens or (N, 4, 32) chorale voices, or Rows of them (`training_windows`)."""

    def __init__(self, config: MusicVaeConfig, tokens):
        self.column = TABLES[config.kind][1]
        if not isinstance(tokens, Rows):
            tokens = InMemoryRows({self.column: np.array(as_voices(tokens, config.voices), dtype=np.uint8)})
        self.rows, self.config = tokens, config
        shape = self.rows.row_shape(self.column)
        if shape[-1] != config.steps_per_window:
            raise ValueError(f"windows have {shape[-1]} steps, the config says {config.steps_per_window}")
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

    def make_batch(self, columns: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        batch = columns[self.column].long()
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
    return {"format": BUNDLE_FORMAT, "models": models, "tokens": token_scheme()}


# --- the shared entry point's run --------------------------------------------------------


def load_windows(manifest: str | Path, kind: str, max_rows: int | None = None) -> dict[str, np.ndarray]:
    """Train and held-out windows of one kind from a MIDI shard manifest (split by piece); with
    `max_rows`, at most that many of each (corpora.readers.read_split)."""
    from corpora.readers import read_split  # the training side only: a registered model never reads shards

    table, column = TABLES[kind]
    split = read_split(manifest, table, [column], max_rows=max_rows)
    return {name: values[column] for name, values in split.items()}


def training_windows(manifest: str | Path, config: MusicVaeConfig, loader: LoaderConfig) -> Rows:
    """The training windows of the config's kind as the family's rows, in memory or streamed as
    `loader` decides (corpora.readers.training_rows)."""
    from corpora.readers import training_rows

    table, column = TABLES[config.kind]
    return training_rows(manifest, table, [column], loader,
                         convert={column: lambda tokens: as_voices(tokens, config.voices)})


def kind_summary(report: dict) -> dict[str, float]:
    """One kind's numbers for the training outcome's summary (flat, as MLflow metrics)."""
    model_row = {name: value for name, value in report["likelihood"]["model"].items() if isinstance(value, (int, float))}
    return {**model_row, "unigram_true_nll_per_token": report["likelihood"]["unigram"]["true_nll_per_token"],
            "prior_statistics_overlap": report["prior_statistics_overlap"],
            "heldout_vs_train_statistics_overlap": report["heldout_vs_train_statistics_overlap"],
            **{f"harmony.{source}.{name}": value for source, row in report["harmony"].items()
               for name, value in row.items() if math.isfinite(value)}}


BENCHMARK_KIND = "chorale"  # the larger of the two kinds (4 voices per step instead of 1), same network


def benchmark_family(manifest: Path, profile: str) -> Callable[[int], tuple[MusicVaeFamily, MusicVaeConfig]]:
    """(steps) -> a fresh (family, config) of the profile on the manifest's chorale windows, as
    `run_training` builds each kind; the data is read once (bench/gpu.py). Only chorales: the
    melody model is the same network over fewer voices."""
    windows = load_windows(manifest, BENCHMARK_KIND)["train"]

    def make(steps: int):
        config = MusicVaeConfig.profile(profile, kind=BENCHMARK_KIND, steps=steps)
        return MusicVaeFamily(config, windows), config

    return make


def run_training(request, run):
    """Train each kind of `request.model_config` ({kind: config}) on the manifest's windows,
    evaluate each on its held-out pieces, and export one bundle holding all of them."""
    from models.train import TrainingOutcome

    start = load_bundle(request.init_from)["models"] if request.init_from else {}
    families, steps, reports, summary, resumed, seconds = [], {}, {}, {}, {}, 0.0
    for kind, values in request.model_config.items():
        config = MusicVaeConfig.from_dict(values)
        loader = request.loader_config()
        data = load_windows(run.manifest, kind, max_rows=loader.eval_rows)  # what the metrics read
        family = MusicVaeFamily(config, training_windows(run.manifest, config, loader))
        if kind in start:
            family.model.load_state_dict(start[kind]["state_dict"])
            run.report.log(f"{kind}: starting from the weights in {request.init_from}")

        def log(step: int, values: dict, kind=kind) -> None:
            run.report.metrics(step, {f"{kind}.{name}": value for name, value in values.items()})

        result = run.fit(family, config, request, run_dir=run.run_dir / kind, log=log, extra={"family": FAMILY.key})
        families.append(family)
        steps[kind], resumed[kind], seconds = result.step, result.resumed_from, seconds + result.seconds
        if not run.distributed.is_main:
            continue
        family.model.cpu()
        report = music_metrics.evaluate(family.model, data["train"], data["heldout"], seed=config.seed,
                                        n_samples=request.options.get("eval_samples", music_metrics.EVAL_SAMPLES),
                                        temperature=GALLERY_TEMPERATURE)
        reports[kind] = report
        summary.update({f"{kind}.{name}": value for name, value in kind_summary(report).items()})
        summary[f"{kind}.train_seconds"] = result.seconds
    if not run.distributed.is_main:
        return None
    for name in AVERAGED_OVER_KINDS:
        summary[name] = float(np.mean([summary[f"{kind}.{name}"] for kind in reports]))
    score = summary[FAMILY.rule.metric]
    bundle = save_bundle(export_bundle(*families, steps=steps), run.run_dir / "bundle.pt")
    return TrainingOutcome(
        bundle=str(bundle), checkpoint=str(result.checkpoint), step=max(steps.values()),
        resumed_from=max(resumed.values()), train_seconds=seconds, score=score, summary=summary,
        report_markdown="\n\n".join(music_metrics.format_report(report) for report in reports.values()),
        details={"steps_per_kind": steps},
    )
