"""Sample-quality metrics, kept apart from training (as in stylegan2-ada's metrics/).

Inception weights cannot be downloaded here, so FID and KID are computed on the 128-d
penultimate features of a small CNN classifier trained on the same corpus
(`FeatureClassifier`). The numbers are therefore called `fid_classifier` and
`kid_classifier`: they rank models on this corpus, and are NOT comparable with
Inception-based FID/KID from papers (shared/research/models.md, section 2). Every report
carries a real-vs-real floor (train vs heldout) and an untrained-generator ceiling so a
number can be read without that context.

All functions take images as uint8 (N, H, W, C), the corpus format, so real and generated
images pass through exactly the same quantization and preprocessing.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 128
CONV_WIDTHS, POOLED = (16, 32), 4  # small enough to train on 60k images in a minute or two on 2 cores
FEATURE_BATCH = 512
KID_DEGREE, KID_COEF0 = 3, 1.0  # k(x, y) = (x.y / d + 1)^3, as in Binkowski et al. 2018
SQRTM_EPS = 1e-6  # added to covariance diagonals when sqrtm of a singular product fails


# --- the feature network -----------------------------------------------------------------


class FeatureClassifier(nn.Module):
    """LeNet-style CNN; `features` (the 128-d layer before the classifier) feeds FID/KID."""

    def __init__(self, channels: int = 1, num_classes: int = 10, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, CONV_WIDTHS[0], 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(CONV_WIDTHS[0], CONV_WIDTHS[1], 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(POOLED),  # any input resolution >= 16 ends as C x 4 x 4
            nn.Flatten(),
        )
        self.embed = nn.Linear(CONV_WIDTHS[1] * POOLED * POOLED, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # pre-activation: ReLU would zero many units and make the covariances singular
        return self.embed(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


def _to_input(pixels: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    pixels = torch.as_tensor(np.asarray(pixels))
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    return pixels.to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@dataclass
class ClassifierConfig:
    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3
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
    order = torch.Generator().manual_seed(config.seed)
    model.train()
    for _ in range(config.epochs):
        permutation = torch.randperm(len(labels), generator=order)
        for start in range(0, len(labels), config.batch_size):
            index = permutation[start : start + config.batch_size]
            loss = F.cross_entropy(model(_to_input(images[index.numpy()], device)), labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    predicted = predict_labels(model, heldout_images, device)
    accuracy = float((predicted == np.asarray(heldout_labels)).mean())
    return model.eval(), accuracy


@torch.no_grad()
def extract_features(model: FeatureClassifier, images, device="cpu") -> np.ndarray:
    model.eval()
    out = [model.features(_to_input(images[i : i + FEATURE_BATCH], device)).double().cpu() for i in range(0, len(images), FEATURE_BATCH)]
    return torch.cat(out).numpy()


@torch.no_grad()
def predict_labels(model: FeatureClassifier, images, device="cpu") -> np.ndarray:
    model.eval()
    out = [model(_to_input(images[i : i + FEATURE_BATCH], device)).argmax(1).cpu() for i in range(0, len(images), FEATURE_BATCH)]
    return torch.cat(out).numpy()


# --- distances between feature distributions ----------------------------------------------


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr(sqrtm(s1 @ s2)) for covariance matrices s1, s2."""
    try:
        from scipy import linalg
    except ImportError:
        linalg = None
    if linalg is not None:
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(s1)) * SQRTM_EPS
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
        return float(np.real(np.trace(covmean)))  # tiny imaginary parts are rounding noise
    # s1 @ s2 has the same eigenvalues as the symmetric PSD sqrt(s1) s2 sqrt(s1)
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root @ s2 @ root)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2) between Gaussian fits of two sets."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * _trace_sqrt_product(s_a, s_b)
    return float(max(value, 0.0))  # can dip below 0 by rounding when the sets are identical


def kernel_distance(feats_a: np.ndarray, feats_b: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: unbiased MMD^2 with a cubic polynomial kernel, averaged over random subsets.
    Returns (mean, std over subsets). Unlike FID it is unbiased in the sample size."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    d = a.shape[1]
    rng = np.random.default_rng(seed)

    def kernel(x, y):
        return (x @ y.T / d + KID_COEF0) ** KID_DEGREE

    values = []
    for _ in range(num_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(within - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def class_coverage(predicted_labels, num_classes: int) -> dict:
    """How many classes the classifier sees among samples, and KL(sample classes || uniform) in nats."""
    counts = np.bincount(np.asarray(predicted_labels, dtype=np.int64), minlength=num_classes)[:num_classes]
    p = counts / max(counts.sum(), 1)
    nonzero = p > 0
    return {
        "classes_covered": int(nonzero.sum()),
        "kl_to_uniform": float((p[nonzero] * np.log(p[nonzero] * num_classes)).sum()),
    }


# --- memorization ------------------------------------------------------------------------


def _flat_unit(images) -> torch.Tensor:
    return torch.as_tensor(np.asarray(images)).reshape(len(images), -1).float().div(255.0)


def _nearest(queries: torch.Tensor, pool: torch.Tensor, chunk: int = 8192, exclude: torch.Tensor | None = None):
    """L2 distance and index of each query's nearest row of `pool`, in chunks of the pool.
    `exclude[i]` is a pool index query i may not match (itself, for within-set distances)."""
    best = torch.full((len(queries),), float("inf"))
    best_index = torch.zeros(len(queries), dtype=torch.int64)
    rows = torch.arange(len(queries))
    for start in range(0, len(pool), chunk):
        dist = torch.cdist(queries, pool[start : start + chunk])
        if exclude is not None:
            local = exclude - start
            inside = (local >= 0) & (local < dist.shape[1])
            dist[rows[inside], local[inside]] = float("inf")
        value, index = dist.min(dim=1)
        better = value < best
        best[better], best_index[better] = value[better], index[better] + start
    return best, best_index


def memorization(samples, train_images, near_copy_fraction: float = 0.5, reference_size: int = 1000,
                 seed: int = 0) -> dict:
    """Pixel-space nearest training image of each sample.

    A sample is a near copy when its distance is below `near_copy_fraction` of the typical
    nearest-neighbour distance between training images (median over `reference_size` of them):
    closer to a training image than training images usually are to each other.
    """
    pool = _flat_unit(train_images)
    distance, index = _nearest(_flat_unit(samples), pool)
    rng = np.random.default_rng(seed)
    reference = torch.as_tensor(rng.choice(len(pool), min(reference_size, len(pool)), replace=False))
    within, _ = _nearest(pool[reference], pool, exclude=reference)
    typical = float(within[torch.isfinite(within)].median()) if len(pool) > 1 else float("nan")
    near_copy = (distance < near_copy_fraction * typical).numpy()
    return {
        "nearest_distance": distance.numpy(),
        "nearest_index": index.numpy(),
        "typical_nn_distance": typical,
        "near_copy": near_copy,
        "near_copy_count": int(near_copy.sum()),
    }


# --- the report --------------------------------------------------------------------------


def gan_report(classifier: FeatureClassifier, train_images, heldout_images, samples: Mapping[str, np.ndarray],
               num_classes: int, reference_size: int = 10000, kid_subsets: int = 100, kid_subset_size: int = 1000,
               seed: int = 0, device="cpu") -> dict[str, dict]:
    """fid_classifier / kid_classifier of each image set against a training reference.

    Rows: "real_vs_real" (heldout images: the floor a perfect model would reach) and one per
    entry of `samples` (e.g. "untrained" as the ceiling, "model"). FID is biased by sample
    size, so every compared set is cut to the same size n.
    """
    rng = np.random.default_rng(seed)
    reference = train_images[np.sort(rng.choice(len(train_images), min(reference_size, len(train_images)), replace=False))]
    ref_feats = extract_features(classifier, reference, device)
    sets = {"real_vs_real": heldout_images, **samples}
    n = min(len(images) for images in sets.values())
    report = {}
    for name, images in sets.items():
        images = images[:n]
        feats = extract_features(classifier, images, device)
        kid, kid_std = kernel_distance(feats, ref_feats, kid_subsets, kid_subset_size, seed)
        report[name] = {
            "n": n,
            "fid_classifier": frechet_distance(feats, ref_feats),
            "kid_classifier": kid,
            "kid_classifier_std": kid_std,
            **class_coverage(predict_labels(classifier, images, device), num_classes),
        }
    return report


def format_report(report: Mapping[str, Mapping]) -> str:
    """The report as a Markdown table."""
    lines = ["| set | n | fid_classifier | kid_classifier | classes | KL to uniform |", "|---|---|---|---|---|---|"]
    for name, row in report.items():
        lines.append(
            f"| {name} | {row['n']} | {row['fid_classifier']:.3f} | {row['kid_classifier']:.4f} ± {row['kid_classifier_std']:.4f} "
            f"| {row['classes_covered']} | {row['kl_to_uniform']:.3f} |"
        )
    return "\n".join(lines)
