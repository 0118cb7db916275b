"""Image GAN family: class-conditional DCGAN and WGAN-GP with an EMA generator.

The networks follow pytorch/examples `dcgan` (strided (transposed) 4x4 convs, BatchNorm,
ReLU in G, LeakyReLU(0.2) in D, N(0, 0.02) init), sized by `resolution` (a power of two,
one up-sampling per doubling from a 4x4 start) and `widths` (channels per stage, 4x4 first).

Conditioning: G gets a label embedding concatenated to z. D gets the label either as one-hot
input channels ("channel", the default) or through a projection head (Miyato & Koyama 2018:
score = linear(h) + <embed(y), sum-pooled h>). Measured on Fashion-MNIST at the demo profile,
projection without spectral norm conditioned perfectly but collapsed within each class
(per-pixel std across z ~0.1 vs ~0.3 in the data); label channels kept the diversity
(fid_classifier 14.7 at 750 steps vs 23.5 at 1500). WGAN-GP (Gulrajani et al. 2017) uses the same D without
BatchNorm (a per-sample gradient penalty is wrong under batch statistics), n_critic critic
steps per G step and Adam(1e-4, betas 0.0/0.9) as in the paper.

Sampling uses an exponential moving average of G's weights (Karras et al.; Yazici et al.
2019), whose BatchNorm statistics are re-estimated at export because the running stats of
the trained G do not belong to the averaged weights.

This module is imported by the registered pyfunc in a process that has only models/ on
its path: it must not import corpora/, dagster, or models.trainer at module level.
"""
from __future__ import annotations

import argparse
import copy
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

BUNDLE_FORMAT = "atelier.image_gan/1"
INIT_STD = 0.02  # DCGAN's weight init (Radford et al. 2016)
LEAKY_SLOPE = 0.2
SAMPLE_CHUNK = 256  # images per forward pass when sampling, to bound memory
BN_CALIBRATION_BATCHES, BN_CALIBRATION_SIZE = 16, 256
EMA_WARMUP = 10  # decay ramps as (1+k)/(EMA_WARMUP+k) so early EMA is not stuck at the init


# --- configuration -----------------------------------------------------------------------


@dataclass
class ImageGanConfig(FamilyConfig):
    architecture: str = "dcgan"  # "dcgan" | "wgan-gp"
    resolution: int = 32
    channels: int = 1
    latent_dim: int = 64
    embed_dim: int = 32  # label embedding concatenated to z
    d_conditioning: str = "channel"  # "channel" (one-hot input maps) | "projection"
    widths: tuple[int, ...] = (128, 64, 32)  # G stage widths from 4x4 up; D mirrors them
    num_classes: int = 10  # 0: unconditional
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    n_critic: int = 1  # D steps per G step; a trainer step is one D step
    gp_weight: float = 10.0  # WGAN-GP only
    ema_decay: float = 0.999
    batch_size: int = 64
    steps: int = 1500
    seed: int = 0

    def __post_init__(self):
        self.widths, self.betas = tuple(self.widths), tuple(self.betas)
        if self.d_conditioning not in ("channel", "projection"):
            raise ValueError(f"d_conditioning must be 'channel' or 'projection', not {self.d_conditioning!r}")
        if self.architecture not in ("dcgan", "wgan-gp"):
            raise ValueError(f"architecture must be 'dcgan' or 'wgan-gp', not {self.architecture!r}")
        stages = math.log2(self.resolution) - 2 if self.resolution >= 8 else -1
        if stages != int(stages) or stages < 1:
            raise ValueError(f"resolution must be a power of two >= 8, not {self.resolution}")
        if len(self.widths) != int(stages):
            raise ValueError(f"resolution {self.resolution} needs {int(stages)} widths (4x4 stage first), got {self.widths}")

    @classmethod
    def profile(cls, name: str, **overrides) -> "ImageGanConfig":
        """A named profile, with any field overridden. Choosing architecture="wgan-gp" also
        switches the optimizer settings to the WGAN-GP paper's unless they are overridden."""
        base = dict(PROFILES[name])
        if overrides.get("architecture") == "wgan-gp" and base.get("architecture") != "wgan-gp":
            base.update(WGAN_GP_OPTIMIZER)
        base.update(overrides)
        return cls(**base)


WGAN_GP_OPTIMIZER = dict(lr_g=1e-4, lr_d=1e-4, betas=(0.0, 0.9), n_critic=5)

PROFILES: dict[str, dict] = {
    # ~2-3 minutes on 2 CPU cores (see the report in bench/train.py): narrow nets, 32x32.
    "demo": dict(widths=(128, 64, 32), latent_dim=64, batch_size=64, steps=1500),
    # the pytorch/examples width (ngf=ndf=64), about 20 minutes on 2 CPU cores
    "cpu-long": dict(widths=(256, 128, 64), latent_dim=100, batch_size=64, steps=8000),
    "gpu": dict(widths=(512, 256, 128), latent_dim=128, batch_size=128, steps=50000),
}


# --- networks ----------------------------------------------------------------------------


def init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, INIT_STD)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, INIT_STD)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    def __init__(self, config: ImageGanConfig):
        super().__init__()
        self.latent_dim, self.num_classes = config.latent_dim, config.num_classes
        self.resolution, self.channels = config.resolution, config.channels
        self.embed = nn.Embedding(config.num_classes, config.embed_dim) if config.num_classes else None
        in_dim = config.latent_dim + (config.embed_dim if config.num_classes else 0)
        w = config.widths
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, w[0], 4, 1, 0, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(True)]
        for a, b in zip(w, w[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(w[-1], config.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)
        if self.embed is not None:
            nn.init.normal_(self.embed.weight)  # on the same scale as z

    def label_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embed(labels)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, embedding: torch.Tensor | None = None):
        if self.embed is not None:
            embedding = self.embed(labels) if embedding is None else embedding
            z = torch.cat([z, embedding.to(z.dtype)], dim=1)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """DCGAN's D (or, with batchnorm=False, the WGAN-GP critic), label-conditioned."""

    def __init__(self, config: ImageGanConfig, batchnorm: bool = True):
        super().__init__()
        w = config.widths[::-1]  # widest stage last, at 4x4
        self.num_classes = config.num_classes
        self.label_channels = config.num_classes if config.d_conditioning == "channel" else 0
        layers: list[nn.Module] = [nn.Conv2d(config.channels + self.label_channels, w[0], 4, 2, 1), nn.LeakyReLU(LEAKY_SLOPE, True)]
        for a, b in zip(w, w[1:]):
            norm = [nn.BatchNorm2d(b)] if batchnorm else []
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=not batchnorm), *norm, nn.LeakyReLU(LEAKY_SLOPE, True)]
        self.features = nn.Sequential(*layers)
        self.score = nn.Conv2d(w[-1], 1, 4, 1, 0)
        projection = config.num_classes and config.d_conditioning == "projection"
        self.embed = nn.Embedding(config.num_classes, w[-1]) if projection else None
        self.apply(init_weights)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_channels:
            onehot = F.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, onehot.expand(-1, -1, x.shape[2], x.shape[3])], dim=1)
        h = self.features(x)
        out = self.score(h).flatten()
        if self.embed is not None:
            out = out + (self.embed(labels) * h.sum(dim=(2, 3))).sum(dim=1)
        return out


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for averaged, current in zip(ema.parameters(), model.parameters()):
        averaged.lerp_(current, 1.0 - decay)
    for averaged, current in zip(ema.buffers(), model.buffers()):
        averaged.copy_(current)


def gradient_penalty(critic: Discriminator, real, fake, labels, autocast) -> torch.Tensor:
    """E[(||grad_x D(x_hat)|| - 1)^2] on random interpolates of real and fake (WGAN-GP)."""
    alpha = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    with autocast():
        scores = critic(mixed, labels)
    (grad,) = torch.autograd.grad(scores.float().sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


# --- the family --------------------------------------------------------------------------


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (N,H,W,C) -> float (N,C,H,W) in [-1, 1], G's tanh range."""
    return pixels.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N,C,H,W) in [-1, 1] -> uint8 (N,H,W,C), as stored in the corpus."""
    pixels = images.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


class ImageGanFamily:
    """Trainer interface (models.trainer.Family) for the image GAN, on in-memory uint8 data."""

    def __init__(self, config: ImageGanConfig, images, labels=None, class_names: Sequence[str] = ()):
        images = np.asarray(images)
        if not images.flags.writeable:  # e.g. read straight from a Parquet buffer; torch wants to own it
            images = images.copy()
        images = torch.as_tensor(images)
        if images.ndim == 3:
            images = images[..., None]
        expected = (config.resolution, config.resolution, config.channels)
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be uint8 (N, {expected[0]}, {expected[1]}, {expected[2]}), got {images.dtype} {tuple(images.shape)}")
        if config.num_classes and labels is None:
            raise ValueError("a class-conditional config needs labels (or set num_classes=0)")
        self.config, self.class_names = config, list(class_names)
        self.images = images
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.int64) if labels is not None else torch.zeros(len(images), dtype=torch.int64)
        if config.num_classes and (self.labels.min() < 0 or self.labels.max() >= config.num_classes):
            raise ValueError(f"labels must lie in [0, {config.num_classes})")
        self.num_items = len(images)

        torch.manual_seed(config.seed)  # the initial weights are part of the run's identity
        self.generator = Generator(config)
        self.discriminator = Discriminator(config, batchnorm=config.architecture == "dcgan")
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
        if device.type == "cuda":  # 60k 32x32 images are 60 MB: keep them on the GPU
            self.images, self.labels = self.images.to(device), self.labels.to(device)

    def make_batch(self, indices: torch.Tensor, device: torch.device):
        indices = indices.to(self.images.device)
        real = to_unit_range(self.images[indices].to(device, non_blocking=True))
        if self.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        return real, self.labels[indices].to(device, non_blocking=True)

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
        else:
            distance = d_real.mean() - d_fake.mean()
            penalty = gradient_penalty(self.discriminator, real, fake.detach(), labels, autocast)
            d_loss = -distance + cfg.gp_weight * penalty
            metrics["wasserstein"], metrics["gradient_penalty"] = distance.item(), penalty.item()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        metrics["d_loss"] = d_loss.item()

        # Generator: the non-saturating loss for DCGAN, -D(G(z)) for WGAN-GP.
        if g_step:
            with autocast():
                score = self.discriminator(fake, labels).float()
            g_loss = F.softplus(-score).mean() if cfg.architecture == "dcgan" else -score.mean()
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            self.opt_g.step()
            g_steps = (step + 1) // cfg.n_critic
            update_ema(self.ema_generator, self.generator, min(cfg.ema_decay, (1 + g_steps) / (EMA_WARMUP + g_steps)))
            metrics["g_loss"] = g_loss.item()
        return metrics

    def sampling_generator(self) -> Generator:
        """A CPU copy of the EMA generator with BatchNorm statistics that fit its weights."""
        generator = copy.deepcopy(self.ema_generator).to("cpu", memory_format=torch.contiguous_format)
        return recalibrate_batchnorm(generator, seed=self.config.seed)


# --- sampling ----------------------------------------------------------------------------


@torch.no_grad()
def recalibrate_batchnorm(generator: Generator, seed: int = 0, batches: int = BN_CALIBRATION_BATCHES,
                          batch_size: int = BN_CALIBRATION_SIZE) -> Generator:
    """Re-estimate BatchNorm running stats as an exact average over fresh samples.

    Uses its own torch.Generator, never the global RNG, so calling it mid-training cannot
    change the run's random stream (and so its resume determinism).
    """
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return generator.eval()
    device = next(generator.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    saved_momentum = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: cumulative average over the batches below
    generator.train()
    for index in range(batches):
        z = torch.randn(batch_size, generator.latent_dim, generator=rng).to(device)
        labels = _default_labels(generator, batch_size, offset=index * batch_size, device=device)
        generator(z, labels)
    for m, momentum in zip(norms, saved_momentum):
        m.momentum = momentum
    return generator.eval()


def _default_labels(generator: Generator, n: int, offset: int = 0, device="cpu") -> torch.Tensor | None:
    # every class in turn, so a grid of n >= num_classes shows each class
    if not generator.num_classes:
        return None
    return (torch.arange(offset, offset + n, device=device) % generator.num_classes).long()


def _labels_tensor(generator: Generator, labels, n: int, device) -> torch.Tensor | None:
    if not generator.num_classes:
        return None
    if labels is None:
        return _default_labels(generator, n, device=device)
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    labels = labels.expand(n) if labels.numel() == 1 else labels
    if labels.numel() != n or labels.min() < 0 or labels.max() >= generator.num_classes:
        raise ValueError(f"labels must be one int or {n} ints in [0, {generator.num_classes})")
    return labels.to(device)


def latents(n: int, latent_dim: int, seed: int) -> torch.Tensor:
    # CPU generator: the same seed gives the same images on any device
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def sample(generator: Generator, n: int, seed: int = 0, labels=None, device: torch.device | str = "cpu") -> np.ndarray:
    """n images as uint8 (n, H, W, C); the same seed and labels always give the same images.
    Conditional models without `labels` cycle through the classes."""
    generator.eval()
    z = latents(n, generator.latent_dim, seed).to(device)
    y = _labels_tensor(generator, labels, n, device)
    chunks = [
        to_uint8(generator(z[i : i + SAMPLE_CHUNK], None if y is None else y[i : i + SAMPLE_CHUNK]))
        for i in range(0, n, SAMPLE_CHUNK)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, generator.resolution, generator.resolution, generator.channels), np.uint8)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation: Gaussian latents live near a sphere, a straight line cuts inside it."""
    cos = (a * b).sum(-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True))
    omega = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    t = t[:, None]
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


@torch.no_grad()
def interpolate(generator: Generator, seed_a: int, seed_b: int, steps: int = 8, label_a: int | None = None,
                label_b: int | None = None, device: torch.device | str = "cpu") -> np.ndarray:
    """A strip of `steps` images from seed_a's latent to seed_b's (slerp), and, for a
    conditional model, from label_a's embedding to label_b's (linear)."""
    generator.eval()
    t = torch.linspace(0, 1, steps)
    z = slerp(latents(1, generator.latent_dim, seed_a), latents(1, generator.latent_dim, seed_b), t).to(device)
    embedding = None
    if generator.num_classes:
        label_a = 0 if label_a is None else label_a
        label_b = label_a if label_b is None else label_b
        ends = generator.label_embedding(torch.tensor([label_a, label_b], device=device))
        embedding = torch.lerp(ends[0:1], ends[1:2], t.to(device)[:, None])
    return to_uint8(generator(z, embedding=embedding))


# --- export for the registry -------------------------------------------------------------


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


def load_bundle(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_generator(bundle: dict | str | Path) -> Generator:
    if not isinstance(bundle, dict):
        bundle = load_bundle(bundle)
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"not an image GAN bundle: format {bundle.get('format')!r}")
    generator = Generator(ImageGanConfig.from_dict(bundle["config"]))
    generator.load_state_dict(bundle["generator"])
    generator.class_names = list(bundle.get("class_names", []))
    return generator.eval()


def save_bundle(bundle: dict, path: str | Path) -> Path:
    from corpora.atomic import atomic_write  # training side only; the pyfunc never writes

    return atomic_write(path, lambda file: torch.save(bundle, file))


# --- command line: `python -m models.image_gan --data data.npz --run-dir runs/x` --------------


def main(argv: Sequence[str] | None = None) -> dict:
    """Train from an .npz (images uint8 (N,H,W,C), labels int, optional class_names) into a run
    folder, resuming if it holds checkpoints; prints the result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m models.image_gan", description=main.__doc__)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    parser.add_argument("--architecture", choices=["dcgan", "wgan-gp"])
    parser.add_argument("--widths", help="comma-separated stage widths, 4x4 stage first")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--max-seconds", type=float)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", default="auto", choices=["auto", "on", "off"])
    args = parser.parse_args(argv)

    from models.trainer import fit  # training needs corpora/ (atomic writes); sampling does not

    torch.set_num_threads(args.threads)
    data = np.load(args.data, allow_pickle=False)
    images, labels = data["images"], data["labels"] if "labels" in data else None
    class_names = [str(c) for c in data["class_names"]] if "class_names" in data else []
    overrides = {
        key: value
        for key, value in dict(architecture=args.architecture, steps=args.steps, batch_size=args.batch_size, seed=args.seed).items()
        if value is not None
    }
    if args.widths:
        overrides["widths"] = tuple(int(w) for w in args.widths.split(","))
    resolution, channels = images.shape[1], (images.shape[3] if images.ndim == 4 else 1)
    num_classes = len(class_names) or (int(labels.max()) + 1 if labels is not None else 0)
    config = ImageGanConfig.profile(args.profile, resolution=resolution, channels=channels, num_classes=num_classes, **overrides)
    trainer_overrides = {k: v for k, v in dict(checkpoint_every=args.checkpoint_every, log_every=args.log_every, max_seconds=args.max_seconds, bf16=args.bf16).items() if v is not None}
    family = ImageGanFamily(config, images, labels, class_names)

    def log(step: int, metrics: dict) -> None:
        print(json.dumps({"step": step, **{k: round(v, 5) for k, v in metrics.items()}}), file=sys.stderr, flush=True)

    result = fit(family, config.trainer_config(**trainer_overrides), args.run_dir, torch.device(args.device), log=log,
                 checkpoint_extra={"family": "image_gan", "config": config.to_dict()})
    if result.finished:
        save_bundle(export_bundle(family, result.step), args.run_dir / "bundle.pt")
    summary = {"step": result.step, "finished": result.finished, "resumed_from": result.resumed_from,
               "seconds": round(result.seconds, 2), "bf16": result.bf16, "checkpoint": str(result.checkpoint)}
    print(json.dumps(summary), flush=True)
    return summary



# --- the shared entry point's run (python -m models.train --family image-gan) ----------------

# Fréchet distance in the feature classifier's space, lower wins; but not by a model that draws
# the wrong class more often than the champion (fid_classifier can improve while labels are ignored).
CHAMPION_RULE = ChampionRule("fid_classifier", higher_is_better=False,
                             guards=(Guard("label_accuracy", higher_is_better=True, tolerance=0.05),))
CHAMPION_METRIC = CHAMPION_RULE.metric
EVAL_SAMPLES = 2000  # per compared set; KID draws subsets of half that
MEMORIZATION_SAMPLES = 256


@dataclass
class ImageSplit:
    """The image corpus as the models see it: uint8 (N, H, W, C) arrays and class indices."""

    train_images: np.ndarray
    train_labels: np.ndarray
    heldout_images: np.ndarray
    heldout_labels: np.ndarray
    class_names: list[str]


def load_image_split(manifest_path: str | Path) -> ImageSplit:
    """Train and held-out images of an image shard manifest; labels index the sorted class names."""
    from corpora.ingest import shard_paths
    from corpora.shards import read_shards, tensors_from_table

    table = read_shards(shard_paths(Path(manifest_path), "images"), columns=["pixels", "label", "split"])
    images = tensors_from_table(table, "pixels")
    names = [name if name is not None else "" for name in table["label"].to_pylist()]
    class_names = sorted(set(names) - {""})
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index.get(name, -1) for name in names], dtype=np.int64)
    heldout = np.array(table["split"].to_pylist()) == "heldout"
    return ImageSplit(images[~heldout], labels[~heldout], images[heldout], labels[heldout], class_names)


def load_classifier(path: str | Path):
    """The feature classifier the image_classifier asset saved (read with weights_only=True)."""
    from models.metrics import FeatureClassifier

    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = FeatureClassifier(saved["channels"], len(saved["class_names"]))
    model.load_state_dict(saved["model"])
    return model.eval()


def evaluation_labels(num_classes: int, count: int) -> np.ndarray | None:
    """The label each evaluation sample is generated for: every class in turn (the held-out set
    is near balanced), so label_accuracy can check each one."""
    return (np.arange(count) % num_classes).astype(np.int64) if num_classes else None


def evaluate(generator: Generator, data: ImageSplit, classifier, untrained: Generator, seed: int) -> dict:
    """The metric table (real-vs-real floor, untrained ceiling, model) and memorization."""
    from models import metrics

    count = min(EVAL_SAMPLES, len(data.heldout_images))
    # Shards are in path order (class folders): a random subset, not the first rows, is the floor.
    chosen = np.sort(np.random.default_rng(seed).choice(len(data.heldout_images), count, replace=False))
    labels = evaluation_labels(generator.num_classes, count)
    samples = {name: metrics.LabelledImages(sample(g, count, seed=seed, labels=labels), labels)
               for name, g in (("untrained_generator", untrained), ("model", generator))}
    heldout = metrics.LabelledImages(data.heldout_images[chosen], data.heldout_labels[chosen] if data.class_names else None)
    report = metrics.gan_report(classifier, data.train_images, heldout, samples, seed=seed)
    copies = metrics.memorization(samples["model"].images[:MEMORIZATION_SAMPLES], data.train_images, seed=seed)
    return {"table": report, "memorization": copies}


def run_training(request, run):
    """Train on the manifest's training images (class-conditional when they have labels), then
    score against held-out images in the space of the classifier at `options["classifier"]`."""
    from models import metrics
    from models.train import TrainingOutcome

    data = load_image_split(run.manifest)
    shape = {"resolution": int(data.train_images.shape[1]), "channels": int(data.train_images.shape[3]),
             "num_classes": len(data.class_names)}
    config = ImageGanConfig.from_dict({**request.model_config, **shape})
    family = ImageGanFamily(config, data.train_images, data.train_labels, data.class_names)
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
                          request.seed)
    table = evaluation["table"]
    model, floor, ceiling = table["model"], table["real_vs_real"], table["untrained_generator"]
    summary = {
        **{name: model[name] for name in ("kid_classifier", "kid_classifier_std", "precision", "recall")},
        **{name: model[name] for name in CHAMPION_RULE.metrics},  # every number the champion rule reads
        f"{CHAMPION_METRIC}_floor": floor[CHAMPION_METRIC], f"{CHAMPION_METRIC}_ceiling": ceiling[CHAMPION_METRIC],
        "kid_classifier_floor": floor["kid_classifier"], "kid_classifier_ceiling": ceiling["kid_classifier"],
        "label_accuracy_real": floor["label_accuracy"], "label_accuracy_untrained": ceiling["label_accuracy"],
        "near_copies": evaluation["memorization"]["near_copy_count"],
    }
    return TrainingOutcome(
        bundle=str(bundle), checkpoint=str(result.checkpoint), step=result.step, resumed_from=result.resumed_from,
        train_seconds=result.seconds, score=float(summary[CHAMPION_METRIC]), summary=summary,
        report_markdown=metrics.format_report(table),
        details={"bf16_autocast": result.bf16, "train_images": len(data.train_images),
                 "heldout_images": len(data.heldout_images), "eval_samples": model["n"],
                 "kid_subset_size": model["kid_subset_size"]},
    )


if __name__ == "__main__":
    main()
