"""The generator and discriminator, after pytorch/examples `dcgan`: strided (transposed) 4x4
convs, BatchNorm, ReLU in G, LeakyReLU(0.2) in D, N(0, 0.02) init. `resolution` (a power of two)
sets one up-sampling per doubling from a 4x4 start; `widths` are the channels per stage, 4x4 first.

Conditioning: G gets a label embedding concatenated to z. D gets the label either as one-hot
input channels ("channel", the default: it kept the diversity within each class) or through a
projection head (Miyato & Koyama 2018: score = linear(h) + <embed(y), sum-pooled h>). The WGAN-GP
critic (Gulrajani et al. 2017) is the same D without BatchNorm: a per-sample gradient penalty is
wrong under batch statistics. SNGAN's D (Miyato et al. 2018) is that D again with every weight
(convolutions, score, projection embedding) spectrally normalised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from models.image_gan.config import ImageGanConfig

INIT_STD = 0.02  # DCGAN's weight init (Radford et al. 2016)
LEAKY_SLOPE = 0.2


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
    """The config's architecture's D: DCGAN's, the WGAN-GP critic or SNGAN's, label-conditioned."""

    def __init__(self, config: ImageGanConfig):
        super().__init__()
        batchnorm = config.architecture == "dcgan"
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
        if config.architecture == "sngan":
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Embedding)):
                    spectral_norm(module)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_channels:
            onehot = F.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, onehot.expand(-1, -1, x.shape[2], x.shape[3])], dim=1)
        h = self.features(x)
        out = self.score(h).flatten()
        if self.embed is not None:
            out = out + (self.embed(labels) * h.sum(dim=(2, 3))).sum(dim=1)
        return out


def gradient_penalty(critic: Discriminator, real, fake, labels, autocast) -> torch.Tensor:
    """E[(||grad_x D(x_hat)|| - 1)^2] on random interpolates of real and fake (WGAN-GP)."""
    alpha = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    with autocast():
        scores = critic(mixed, labels)
    (grad,) = torch.autograd.grad(scores.float().sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
