"""Training the painting GAN: the trainer-interface family (models.trainer.Family), the bundle it
exports, and `run_training`, what `python -m models.train --family painting-gan` runs.

StyleGAN2: non-saturating logistic loss; lazy R1 on reals (gamma/2 * |grad D|^2 every `r1_every` D steps,
scaled by r1_every, with D's Adam lr and betas adjusted by r1_every/(r1_every+1) as in the
paper); style mixing (with `style_mixing_prob` the w of a second z takes over from a random
layer on); an EMA generator; the running mean of w that truncation needs is tracked in G's step.
FastGAN: hinge loss, and D's reconstruction of the real pictures (models.painting_gan.fastgan),
no R1 and no style mixing.
Real and fake images both pass through DiffAugment (models.painting_gan.augment).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.batches import InMemoryRows, Rows
from models.bundle import save_bundle
from models.generators import ema_decay, to_unit_range, update_ema
from models.painting_gan import CHAMPION_RULE, metrics
from models.painting_gan.augment import crop_batch, diff_augment, pictures_tensor
from models.painting_gan.config import PaintingGanConfig
from models.painting_gan.fastgan import QUADRANTS, reconstruction_targets
from models.painting_gan.networks import build_discriminator, build_generator
from models.painting_gan.sampling import BUNDLE_FORMAT, load_generator
from models.trainer import to_device

PIXELS = "pixels"  # the painting table's picture column


class PaintingGanFamily:
    """Trainer interface (models.trainer.Family) for the painting GAN. An item is a picture
    (uint8 (N, H, W, C) arrays, or Rows with a "pixels" column); a batch is one fresh random crop
    of each drawn picture."""

    def __init__(self, config: PaintingGanConfig, pictures_uint8):
        self.config = config
        if not isinstance(pictures_uint8, Rows):
            pictures_uint8 = np.asarray(pictures_uint8)
            pictures_tensor(pictures_uint8[:0])  # checks dtype and rank
            pictures_uint8 = InMemoryRows({PIXELS: pictures_uint8})
        self.rows = pictures_uint8
        shape = self.rows.row_shape(PIXELS)
        if self.rows.num_rows == 0 or shape[-1] != config.channels:
            raise ValueError(f"need at least one picture with {config.channels} channels, got "
                             f"{self.rows.num_rows} of {shape}")

        torch.manual_seed(config.seed)  # the initial weights and noise maps are part of the run's identity
        self.generator, self.discriminator = build_generator(config), build_discriminator(config)
        self.ema_generator = copy.deepcopy(self.generator).requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=config.betas)
        # lazy R1 makes one D "step" r1_every/(r1_every+1) of a step: Karras et al. 2020, Appendix B
        ratio = config.r1_every / (config.r1_every + 1) if self._uses_r1() else 1.0
        d_betas = tuple(beta ** ratio for beta in config.betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr * ratio, betas=d_betas)
        self.channels_last = False

    # the trainer interface
    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator, "ema_generator": self.ema_generator}

    def compiled_modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}  # the R1 penalty differentiates the discriminator twice

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def schedulers(self) -> dict[str, Any]:
        return {}

    def to(self, device: torch.device, channels_last: bool) -> None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for module in self.modules().values():
            module.to(device=device, memory_format=fmt)
        self.channels_last = channels_last
        if isinstance(self.rows, InMemoryRows):  # a handful of pictures: crops are cut where the model runs
            self.rows.to(device)

    def make_batch(self, columns: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        pictures = to_unit_range(to_device(columns[PIXELS], device))
        real = crop_batch(pictures, torch.arange(len(pictures)), self.config.resolution, self.config.crop_scale)
        return real.contiguous(memory_format=torch.channels_last) if self.channels_last else real

    def _uses_r1(self) -> bool:
        return self.config.architecture == "stylegan2" and self.config.r1_gamma > 0

    def _training_styles(self, n: int, device: torch.device, track_w_avg: bool) -> torch.Tensor:
        """ws for n fresh z; with style_mixing_prob, a second z's w from a random layer on."""
        cfg = self.config
        ws = self.generator.styles(torch.randn(n, cfg.z_dim, device=device), track_w_avg=track_w_avg)
        if torch.rand(()).item() < cfg.style_mixing_prob:
            crossover = int(torch.randint(1, self.generator.num_ws, ()))
            mixed = self.generator.styles(torch.randn(n, cfg.z_dim, device=device))
            ws = torch.cat([ws[:, :crossover], mixed[:, crossover:]], dim=1)
        return ws

    def _score(self, images: torch.Tensor, autocast) -> torch.Tensor:
        with autocast():
            return self.discriminator(diff_augment(images, self.config.diffaugment)).float()

    def _r1_penalty(self, real: torch.Tensor) -> torch.Tensor:
        # in float32, outside autocast: a squared gradient norm is too small for bf16
        real = real.detach().float().requires_grad_(True)
        scores = self.discriminator(diff_augment(real, self.config.diffaugment))
        (grad,) = torch.autograd.grad(scores.sum(), real, create_graph=True)
        return grad.square().sum(dim=(1, 2, 3)).mean()

    def train_step(self, batch: torch.Tensor, step: int, autocast) -> dict[str, float]:
        if self.config.architecture == "fastgan":
            return self._fastgan_step(batch, step, autocast)
        return self._stylegan2_step(batch, step, autocast)

    def _stylegan2_step(self, real: torch.Tensor, step: int, autocast) -> dict[str, float]:
        cfg = self.config
        n, metrics = real.shape[0], {}

        # D: real up, fake down (non-saturating logistic loss)
        self.discriminator.requires_grad_(True)
        with torch.no_grad(), autocast():
            fake = self.generator.synthesis(self._training_styles(n, real.device, track_w_avg=False))
        d_real, d_fake = self._score(real, autocast), self._score(fake, autocast)
        d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        metrics.update(d_loss=d_loss.item(), d_real_sign=d_real.sign().mean().item())  # ADA's overfitting signal

        if self._uses_r1() and step % cfg.r1_every == 0:
            r1 = self._r1_penalty(real)
            self.opt_d.zero_grad(set_to_none=True)
            (r1 * (cfg.r1_gamma / 2) * cfg.r1_every).backward()
            self.opt_d.step()
            metrics["r1"] = r1.item()

        # G: make D call the (augmented) fakes real
        with autocast():
            fake = self.generator.synthesis(self._training_styles(n, real.device, track_w_avg=True))
        metrics["g_loss"] = self._generator_step(fake, lambda scores: F.softplus(-scores).mean(), step, autocast)
        return metrics

    def _fastgan_step(self, real: torch.Tensor, step: int, autocast) -> dict[str, float]:
        """Hinge loss; D also reconstructs the augmented reals from its own features (one random
        quadrant a step, from torch's global RNG, so a resumed run draws the same)."""
        cfg, n = self.config, real.shape[0]
        quadrant = int(torch.randint(0, QUADRANTS, ()))
        self.discriminator.requires_grad_(True)
        with torch.no_grad(), autocast():
            fake = self.generator(torch.randn(n, cfg.z_dim, device=real.device), noise_mode="random")
        with autocast():
            augmented = diff_augment(real, cfg.diffaugment)
            d_real, whole, part = self.discriminator.score_and_reconstruct(augmented, quadrant)
            d_fake = self.discriminator(diff_augment(fake, cfg.diffaugment))
        whole_target, part_target = reconstruction_targets(augmented.float(), quadrant)
        reconstruction = F.mse_loss(whole.float(), whole_target) + F.mse_loss(part.float(), part_target)
        d_loss = F.relu(1 - d_real.float()).mean() + F.relu(1 + d_fake.float()).mean()
        self.opt_d.zero_grad(set_to_none=True)
        (d_loss + cfg.reconstruction_weight * reconstruction).backward()
        self.opt_d.step()
        metrics = dict(d_loss=d_loss.item(), reconstruction=reconstruction.item(), d_real_sign=d_real.sign().mean().item())

        with autocast():
            fake = self.generator(torch.randn(n, cfg.z_dim, device=real.device), noise_mode="random")
        metrics["g_loss"] = self._generator_step(fake, lambda scores: -scores.mean(), step, autocast)
        return metrics

    def _generator_step(self, fake: torch.Tensor, loss_of_scores: Callable, step: int, autocast) -> float:
        """G's update from D's scores of `fake` (made with gradients), then the EMA; the loss."""
        self.discriminator.requires_grad_(False)  # no D gradients to compute in G's step
        g_loss = loss_of_scores(self._score(fake, autocast))
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self.discriminator.requires_grad_(True)
        update_ema(self.ema_generator, self.generator, ema_decay(step, self.config.ema_decay))
        return g_loss.item()

    def sampling_generator(self) -> nn.Module:
        """A CPU copy of the EMA generator (w_avg and the noise maps come with its buffers; a
        FastGAN's BatchNorm statistics are recomputed for the EMA weights)."""
        generator = copy.deepcopy(self.ema_generator).to("cpu", memory_format=torch.contiguous_format).eval()
        return generator.standing_statistics() if self.config.architecture == "fastgan" else generator


def export_bundle(family: PaintingGanFamily, step: int | None = None) -> dict:
    """What a registered model needs, as tensors and plain values (torch.load(weights_only=True)).
    A StyleGAN2 generator's state holds w_avg (`mapping.w_avg`) and the fixed noise maps; a
    FastGAN one its BatchNorm statistics."""
    return {
        "format": BUNDLE_FORMAT,
        "config": family.config.to_dict(),
        "generator": family.sampling_generator().state_dict(),
        "step": step,
    }


def load_pictures(manifest_path: str | Path, max_rows: int | None = None) -> dict[str, np.ndarray]:
    """uint8 (N, H, W, C) pictures of a painting shard manifest: "train" and "heldout" (may be
    empty: ingest holds out ~10% of 13 pictures); with `max_rows`, at most that many of each."""
    from corpora.readers import read_split  # the training side only: a registered model never reads shards

    split = read_split(manifest_path, "images", [PIXELS], max_rows=max_rows)
    return {name: columns[PIXELS] for name, columns in split.items()}


def benchmark_family(manifest: Path, profile: str) -> Callable[[int], tuple[PaintingGanFamily, PaintingGanConfig]]:
    """(steps) -> a fresh (family, config) of the profile on the manifest's training pictures, as
    `run_training` builds it; the data is read once (bench/gpu.py)."""
    pictures = load_pictures(manifest)["train"]

    def make(steps: int):
        config = PaintingGanConfig.profile(profile, channels=int(pictures.shape[3]), steps=steps)
        return PaintingGanFamily(config, pictures), config

    return make


def run_training(request, run):
    """Train on random crops of the manifest's training pictures; score samples against real crops
    with a real-vs-real floor and an untrained-generator ceiling."""
    from models.train import TrainingOutcome

    from corpora.readers import training_rows

    loader = request.loader_config()
    pictures = load_pictures(run.manifest, max_rows=loader.eval_rows)  # what the metrics read
    config = PaintingGanConfig.from_dict(request.model_config)
    family = PaintingGanFamily(config, training_rows(run.manifest, "images", [PIXELS], loader))
    if request.init_from:
        start = load_generator(request.init_from).state_dict()
        for generator in (family.generator, family.ema_generator):
            generator.load_state_dict(start)
        run.report.log(f"starting from the weights in {request.init_from}")
    result = run.fit(family, config, request)
    if not run.distributed.is_main:
        return None
    bundle = save_bundle(export_bundle(family, step=result.step), run.run_dir / "bundle.pt")
    report = metrics.painting_reports(
        {"untrained_generator": metrics.untrained_generator(config), "model": load_generator(bundle)},
        pictures["train"], heldout=pictures["heldout"], n=request.options.get("eval_samples", 256), seed=config.seed)
    kid_key = next(k for k in report["model"] if k.startswith("kid_style_") and not k.endswith("_std"))
    score = float(report["model"][kid_key])
    metric = CHAMPION_RULE.metric
    summary = {metric: score, kid_key: score, f"{metric}_floor": report["real_vs_real"][kid_key],
               f"{metric}_ceiling": report["untrained_generator"][kid_key],
               "near_copies": report["model"]["near_copies"],
               "near_copies_real_vs_real": report["real_vs_real"]["near_copies"]}
    return TrainingOutcome(
        bundle=str(bundle), checkpoint=str(result.checkpoint), step=result.step, resumed_from=result.resumed_from,
        train_seconds=result.seconds, score=score, summary=summary,
        report_markdown=metrics.format_painting_report(report),
        details={"train_pictures": family.rows.num_rows, "heldout_pictures": len(pictures["heldout"]),
                 "feature_network": report["model"]["feature_network"]},
    )
