"""Training the image GAN: the trainer's Family (models.trainer.fit) on uint8 images,
the bundle it exports, and `run_training`, what `python -m models.train --family image-gan` runs.

DCGAN uses the non-saturating loss; WGAN-GP (Gulrajani et al. 2017) takes n_critic critic steps
per G step with Adam(1e-4, betas 0.0/0.9) as in the paper; SNGAN (Miyato et al. 2018) the hinge loss. Samples come from an exponential
moving average of G's weights (Karras et al.; Yazici et al. 2019), whose BatchNorm statistics are
re-estimated at export.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.batches import InMemoryRows, Rows
from models.bundle import save_bundle
from models.classifier import load_classifier
from models.generators import ema_decay, to_unit_range, update_ema
from models.image_gan import CHAMPION_RULE
from models.image_gan.config import ImageGanConfig
from models.image_gan.data import load_image_split, training_images
from models.image_gan.metrics import evaluate, format_report
from models.image_gan.networks import Discriminator, Generator, gradient_penalty
from models.image_gan.sampling import BUNDLE_FORMAT, load_generator, recalibrate_batchnorm
from models.trainer import to_device


class ImageGanFamily:
    """Trainer interface (models.trainer.Family) for the image GAN, on uint8 images: arrays (with
    `labels`) or Rows with "pixels" and "label" (class indices) columns (models.batches)."""

    def __init__(self, config: ImageGanConfig, images, labels=None, class_names: Sequence[str] = ()):
        if config.num_classes and labels is None and not isinstance(images, Rows):
            raise ValueError("a class-conditional config needs labels (or set num_classes=0)")
        if not isinstance(images, Rows):
            images = np.asarray(images)
            images = images[..., None] if images.ndim == 3 else images
            labels = np.zeros(len(images), dtype=np.int64) if labels is None else np.array(labels, dtype=np.int64)
            images = InMemoryRows({"pixels": images, "label": labels})
        self.rows = images
        expected = (config.resolution, config.resolution, config.channels)
        if self.rows.row_shape("pixels") != expected:
            raise ValueError(f"images must be uint8 (N, {expected[0]}, {expected[1]}, {expected[2]}), got rows of "
                             f"{self.rows.row_shape('pixels')}")
        if isinstance(self.rows, InMemoryRows):
            pixels, labels = self.rows.columns["pixels"], self.rows.columns["label"]
            if pixels.dtype != torch.uint8:
                raise ValueError(f"images must be uint8, got {pixels.dtype}")
            if config.num_classes and (labels.min() < 0 or labels.max() >= config.num_classes):
                raise ValueError(f"labels must lie in [0, {config.num_classes})")
        self.config, self.class_names = config, list(class_names)

        torch.manual_seed(config.seed)  # the initial weights are part of the run's identity
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
        self.ema_generator = copy.deepcopy(self.generator).requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr_g, betas=config.betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d, betas=config.betas)
        self.channels_last = False

    # the trainer interface
    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator, "ema_generator": self.ema_generator}

    def compiled_modules(self) -> dict[str, nn.Module]:
        if self.config.architecture == "wgan-gp":  # the gradient penalty differentiates the critic twice
            return {"generator": self.generator}
        return {"generator": self.generator, "discriminator": self.discriminator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def schedulers(self) -> dict[str, Any]:
        return {}

    def to(self, device: torch.device, channels_last: bool) -> None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for module in self.modules().values():
            module.to(device=device, memory_format=fmt)
        self.channels_last = channels_last
        if device.type == "cuda" and isinstance(self.rows, InMemoryRows):  # 60k 32x32 images are 60 MB: keep them on the GPU
            self.rows.to(device)

    def make_batch(self, columns: dict[str, torch.Tensor], device: torch.device):
        real = to_unit_range(to_device(columns["pixels"], device))
        if self.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        return real, to_device(columns["label"], device)

    def is_generator_step(self, step: int) -> bool:
        return (step + 1) % self.config.n_critic == 0

    def train_step(self, batch, step: int, autocast) -> dict[str, float]:
        cfg = self.config
        real, labels = batch
        labels = labels if cfg.num_classes else None
        g_step = self.is_generator_step(step)
        z = torch.randn(real.size(0), cfg.latent_dim, device=real.device)

        # Critic / discriminator: real up, fake down.
        with torch.set_grad_enabled(g_step), autocast():
            fake = self.generator(z, labels)
        with autocast():
            d_real = self.discriminator(real, labels).float()
            d_fake = self.discriminator(fake.detach(), labels).float()
        metrics = {}
        if cfg.architecture == "dcgan":
            d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()  # BCE with logits
            metrics["d_real_prob"] = torch.sigmoid(d_real).mean().item()
            metrics["d_fake_prob"] = torch.sigmoid(d_fake).mean().item()
        elif cfg.architecture == "sngan":
            d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()  # hinge
            metrics["d_real"], metrics["d_fake"] = d_real.mean().item(), d_fake.mean().item()
        else:
            distance = d_real.mean() - d_fake.mean()
            penalty = gradient_penalty(self.discriminator, real, fake.detach(), labels, autocast)
            d_loss = -distance + cfg.gp_weight * penalty
            metrics["wasserstein"], metrics["gradient_penalty"] = distance.item(), penalty.item()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        metrics["d_loss"] = d_loss.item()

        # Generator: the non-saturating loss for DCGAN, -D(G(z)) for WGAN-GP and SNGAN.
        if g_step:
            with autocast():
                score = self.discriminator(fake, labels).float()
            g_loss = F.softplus(-score).mean() if cfg.architecture == "dcgan" else -score.mean()
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            self.opt_g.step()
            g_steps = (step + 1) // cfg.n_critic
            update_ema(self.ema_generator, self.generator, ema_decay(g_steps, cfg.ema_decay))
            metrics["g_loss"] = g_loss.item()
        return metrics

    def sampling_generator(self) -> Generator:
        """A CPU copy of the EMA generator with BatchNorm statistics that fit its weights."""
        generator = copy.deepcopy(self.ema_generator).to("cpu", memory_format=torch.contiguous_format)
        return recalibrate_batchnorm(generator, seed=self.config.seed)


def export_bundle(family: ImageGanFamily, step: int | None = None) -> dict:
    """What a registered model needs, as tensors and plain values (torch.load(weights_only=True))."""
    generator = family.sampling_generator()
    return {
        "format": BUNDLE_FORMAT,
        "config": family.config.to_dict(),
        "generator": generator.state_dict(),
        "class_names": list(family.class_names),
        "step": step,
    }


# --- the shared entry point's run (python -m models.train --family image-gan) ----------------


def benchmark_family(manifest: Path, profile: str) -> Callable[[int], tuple[ImageGanFamily, ImageGanConfig]]:
    """(steps) -> a fresh (family, config) of the profile, sized to the manifest's images as
    `run_training` sizes it; the data is read once (bench/gpu.py)."""
    data = load_image_split(manifest)
    shape = {"resolution": int(data.train_images.shape[1]), "channels": int(data.train_images.shape[3]),
             "num_classes": len(data.class_names)}

    def make(steps: int):
        config = ImageGanConfig.profile(profile, steps=steps, **shape)
        return ImageGanFamily(config, data.train_images, data.train_labels, data.class_names), config

    return make


def run_training(request, run):
    """Train on the manifest's training images (class-conditional when they have labels), then
    score against held-out images in the space of the classifier at `options["classifier"]`."""
    from models.train import TrainingOutcome

    loader = request.loader_config()
    data = load_image_split(run.manifest, max_rows=loader.eval_rows)  # what the metrics read
    rows = training_images(run.manifest, loader, data.class_names)
    height, _, channels = rows.row_shape("pixels")
    config = ImageGanConfig.from_dict({**request.model_config, "resolution": height, "channels": channels,
                                       "num_classes": len(data.class_names)})
    family = ImageGanFamily(config, rows, class_names=data.class_names)
    untrained = family.sampling_generator()
    if request.init_from:
        start = load_generator(request.init_from).state_dict()
        for generator in (family.generator, family.ema_generator):
            generator.load_state_dict(start)
        run.report.log(f"starting from the weights in {request.init_from}")
    result = run.fit(family, config, request)
    if not run.distributed.is_main:
        return None
    bundle = save_bundle(export_bundle(family, step=result.step), run.run_dir / "bundle.pt")
    evaluation = evaluate(load_generator(bundle), data, load_classifier(request.options["classifier"]), untrained,
                          config.seed)
    table = evaluation["table"]
    model, floor, ceiling = table["model"], table["real_vs_real"], table["untrained_generator"]
    metric = CHAMPION_RULE.metric
    summary = {
        **{name: model[name] for name in ("kid_classifier", "kid_classifier_std", "precision", "recall")},
        **{name: model[name] for name in CHAMPION_RULE.metrics},  # every number the champion rule reads
        f"{metric}_floor": floor[metric], f"{metric}_ceiling": ceiling[metric],
        "kid_classifier_floor": floor["kid_classifier"], "kid_classifier_ceiling": ceiling["kid_classifier"],
        "label_accuracy_real": floor["label_accuracy"], "label_accuracy_untrained": ceiling["label_accuracy"],
        "near_copies": evaluation["memorization"]["near_copy_count"],
    }
    return TrainingOutcome(
        bundle=str(bundle), checkpoint=str(result.checkpoint), step=result.step, resumed_from=result.resumed_from,
        train_seconds=result.seconds, score=float(summary[metric]), summary=summary,
        report_markdown=format_report(table),
        details={"bf16_autocast": result.bf16, "train_images": rows.num_rows,
                 "heldout_images": len(data.heldout_images), "eval_samples": model["n"],
                 "kid_subset_size": model["kid_subset_size"]},
    )
