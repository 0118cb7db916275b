"""A CNN classifier on a labelled picture corpus, whose embedding serves as a feature space.

Inception weights cannot be downloaded here, so the image family's FID and KID, and the
painting family's optional style network, use the 128-d embedding of this classifier trained
on the corpus itself. All functions take images as uint8 (N, H, W, C), the corpus format.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 128
CONV_WIDTHS = (32, 64, 128)  # one stride-2 block each: 32x32 -> 4x4
FEATURE_BATCH = 512


class FeatureClassifier(nn.Module):
    """Three conv blocks (3x3 stride-2 conv, BatchNorm, ReLU), global average pooling, a
    128-d embedding and a linear head; `features` (the embedding) feeds FID/KID and
    precision/recall.

    Strided convolutions rather than conv + max-pool: far cheaper on CPU at the same widths,
    which keeps its training within the pipeline's time.
    """

    def __init__(self, channels: int = 1, num_classes: int = 10, feature_dim: int = FEATURE_DIM,
                 widths: tuple[int, ...] = CONV_WIDTHS):
        super().__init__()
        layers: list[nn.Module] = []
        for width_in, width_out in zip((channels, *widths), widths):
            layers += [nn.Conv2d(width_in, width_out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width_out), nn.ReLU(True)]
        # global pooling: any input resolution gives the same embedding size
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Linear(widths[-1], feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # pre-activation: ReLU would zero many units and make the covariances singular
        return self.embed(self.body(x))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def _to_input(pixels: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    pixels = torch.as_tensor(np.asarray(pixels))
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    return pixels.to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@dataclass
class ClassifierConfig:
    epochs: int = 2  # on Fashion-MNIST 0.895 held out against 0.902 for 3, at two thirds the time (docs/image-gan.md)
    batch_size: int = 128
    lr: float = 2e-3  # peak of a cosine decay to zero over all steps
    seed: int = 0


def train_classifier(images, labels, heldout_images, heldout_labels, config: ClassifierConfig | None = None,
                     device: torch.device | str = "cpu") -> tuple[FeatureClassifier, float]:
    """Train the feature network on (images, labels); returns it and its heldout accuracy."""
    config = config or ClassifierConfig()
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    channels = images.shape[3] if np.ndim(images) == 4 else 1
    torch.manual_seed(config.seed)
    model = FeatureClassifier(channels, int(max(labels.max(), np.max(heldout_labels))) + 1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    # decaying to zero gets most of a longer run's accuracy out of a few epochs
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs * steps_per_epoch, 1))
    order = torch.Generator().manual_seed(config.seed)
    model.train()
    for _ in range(config.epochs):
        permutation = torch.randperm(len(labels), generator=order)
        for start in range(0, len(labels), config.batch_size):
            index = permutation[start : start + config.batch_size]
            if len(index) < 2:  # BatchNorm needs two samples
                continue
            loss = F.cross_entropy(model(_to_input(images[index.numpy()], device)), labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return model, label_accuracy(model, heldout_images, heldout_labels, device)


@torch.no_grad()
def embed_and_classify(model: FeatureClassifier, images, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """(features as float64 (N, FEATURE_DIM), predicted class (N,)) in one pass."""
    model.eval()
    features, predicted = [], []
    for start in range(0, len(images), FEATURE_BATCH):
        batch = model.features(_to_input(images[start : start + FEATURE_BATCH], device))
        features.append(batch.double().cpu())
        predicted.append(model.classify(batch).argmax(1).cpu())
    if not features:
        return np.zeros((0, model.embed.out_features)), np.zeros(0, dtype=np.int64)
    return torch.cat(features).numpy(), torch.cat(predicted).numpy()


def extract_features(model: FeatureClassifier, images, device="cpu") -> np.ndarray:
    return embed_and_classify(model, images, device)[0]


def predict_labels(model: FeatureClassifier, images, device="cpu") -> np.ndarray:
    return embed_and_classify(model, images, device)[1]


def label_accuracy(model: FeatureClassifier, images, labels, device="cpu") -> float:
    """Fraction of `images` the classifier puts in class `labels` (for conditional samples: the
    label each was generated for)."""
    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    return float((predict_labels(model, images, device) == labels).mean()) if len(labels) else math.nan


# --- the weights file (the image_classifier asset writes it; metrics and style transfer read it) ---


def save_classifier(model: FeatureClassifier, path: str | Path, class_names, heldout_accuracy: float) -> Path:
    """The classifier as plain values (its state dict, class names, input channels, held-out
    accuracy), written atomically; `load_classifier` reads it back weights-only."""
    from common.atomic import atomic_write

    state = {"model": model.cpu().state_dict(), "class_names": list(class_names),
             "channels": int(model.body[0].in_channels), "heldout_accuracy": float(heldout_accuracy)}
    return atomic_write(path, lambda file: torch.save(state, file))


def load_classifier(path: str | Path) -> FeatureClassifier:
    """The classifier `save_classifier` wrote, read with weights_only=True."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = FeatureClassifier(saved["channels"], len(saved["class_names"]))
    model.load_state_dict(saved["model"])
    return model.eval()
