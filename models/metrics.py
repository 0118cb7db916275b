"""Sample-quality metrics, kept apart from training (as in stylegan2-ada's metrics/).

Inception weights cannot be downloaded here, so FID and KID are computed on the 128-d
embedding of a CNN classifier trained on the same corpus (`FeatureClassifier`). The numbers
are therefore called `fid_classifier` and `kid_classifier`: they rank models on this corpus,
and are NOT comparable with Inception-based FID/KID from papers. Every report carries a
real-vs-real floor (held-out vs training images) and an untrained-generator ceiling so a
number can be read without that context.

Beside the distances, each set gets:
- precision and recall in the same feature space (Kynkäänniemi et al. 2019): how much of the
  samples lies on the real manifold, and how much of the real manifold the samples reach, each
  manifold being the union of k-nearest-neighbour balls around its points;
- label_accuracy: how often the classifier gives a sample the label it was conditioned on
  (for real images, their own label). A conditional generator that ignores its label sits
  at chance however good its images are.

All functions take images as uint8 (N, H, W, C), the corpus format, so real and generated
images pass through exactly the same quantization and preprocessing.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 128
CONV_WIDTHS = (32, 64, 128)  # one stride-2 block each: 32x32 -> 4x4
FEATURE_BATCH = 512
KID_DEGREE, KID_COEF0 = 3, 1.0  # k(x, y) = (x.y / d + 1)^3, as in Binkowski et al. 2018
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
PR_NEIGHBOURS = 3  # k of the k-NN radii (Kynkäänniemi et al. use 3)
DISTANCE_CHUNK = 1024  # query rows per cdist block, to bound memory
SQRTM_EPS = 1e-6  # added to covariance diagonals when sqrtm of a singular product fails


# --- the feature network -----------------------------------------------------------------


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
    epochs: int = 3
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


def kid_subset_size(n: int, requested: int = KID_SUBSET_SIZE) -> int:
    """At most half the smaller set: subsets as large as the set are all the same set, and
    their spread would say nothing about the sampling error."""
    return max(2, min(requested, n // 2))


def kernel_distance(feats_a: np.ndarray, feats_b: np.ndarray, num_subsets: int = KID_SUBSETS,
                    subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> tuple[float, float]:
    """KID: unbiased MMD^2 with a cubic polynomial kernel, averaged over random subsets of
    `subset_size` (capped at the set sizes). Returns (mean, std over subsets). Unlike FID it
    is unbiased in the sample size."""
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


# --- precision and recall (Kynkäänniemi et al. 2019) ---------------------------------------


def _pairwise_distances(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    # the exact (not matrix-product) path: a point's distance to itself must come out 0
    return torch.cdist(queries, points, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(feats: torch.Tensor, k: int = PR_NEIGHBOURS, chunk: int = DISTANCE_CHUNK) -> torch.Tensor:
    """Distance from each row of `feats` to its k-th nearest other row."""
    radii = []
    for start in range(0, len(feats), chunk):
        distances = _pairwise_distances(feats[start : start + chunk], feats)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # the smallest, 0, is the row itself
    return torch.cat(radii)


def inside_any_ball(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
                    chunk: int = DISTANCE_CHUNK) -> torch.Tensor:
    """For each query, whether it lies within radii[j] of some centres[j]."""
    inside = []
    for start in range(0, len(queries), chunk):
        distances = _pairwise_distances(queries[start : start + chunk], centres)
        inside.append((distances <= radii[None, :]).any(dim=1))
    return torch.cat(inside) if inside else torch.zeros(0, dtype=torch.bool)


def precision_recall(real_feats, sample_feats, k: int = PR_NEIGHBOURS, chunk: int = DISTANCE_CHUNK) -> tuple[float, float]:
    """Precision: the fraction of samples inside the real manifold (the union of balls around
    each real feature reaching its k-th nearest real neighbour). Recall: the fraction of real
    features inside the sample manifold, built the same way from the samples. Both sets should
    have the same size: the radii shrink as a set grows."""
    real = torch.as_tensor(np.asarray(real_feats), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(sample_feats), dtype=torch.float64)
    if min(len(real), len(fake)) < k + 1:
        raise ValueError(f"precision/recall with k={k} needs at least {k + 1} features per set")
    precision = inside_any_ball(fake, real, knn_radii(real, k, chunk), chunk).double().mean()
    recall = inside_any_ball(real, fake, knn_radii(fake, k, chunk), chunk).double().mean()
    return float(precision), float(recall)


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


@dataclass
class LabelledImages:
    """uint8 images (N, H, W, C) and the class each shows or was generated for (None: unknown,
    e.g. an unconditional generator)."""

    images: np.ndarray
    labels: np.ndarray | None = None


def gan_report(classifier: FeatureClassifier, train_images, heldout: LabelledImages,
               samples: Mapping[str, LabelledImages], reference_size: int = 10000, kid_subsets: int = KID_SUBSETS,
               kid_subset_size_limit: int = KID_SUBSET_SIZE, neighbours: int = PR_NEIGHBOURS, seed: int = 0,
               device="cpu") -> dict[str, dict]:
    """Each image set against a training reference, in the classifier's feature space.

    Rows: "real_vs_real" (held-out images: the floor a perfect model would reach) and one per
    entry of `samples` (e.g. "untrained_generator" as the ceiling, "model"). FID is biased by
    sample size, so every compared set is cut to the same size n; FID and KID compare it with
    `reference_size` training images, precision and recall with n of them (their k-NN radii
    depend on set size).
    """
    rng = np.random.default_rng(seed)
    # training images are stored in class order: draw the reference at random, never the first rows
    reference = train_images[np.sort(rng.choice(len(train_images), min(reference_size, len(train_images)), replace=False))]
    reference_feats, _ = embed_and_classify(classifier, reference, device)
    sets = {"real_vs_real": heldout, **samples}
    n = min(len(labelled.images) for labelled in sets.values())
    subset_size = kid_subset_size(n, kid_subset_size_limit)
    manifold_reference = reference_feats[rng.choice(len(reference_feats), min(n, len(reference_feats)), replace=False)]
    report = {}
    for name, labelled in sets.items():
        feats, predicted = embed_and_classify(classifier, labelled.images[:n], device)
        kid, kid_std = kernel_distance(feats, reference_feats, kid_subsets, subset_size, seed)
        precision, recall = precision_recall(manifold_reference, feats, neighbours)
        accuracy = math.nan if labelled.labels is None else float((predicted == np.asarray(labelled.labels)[:n]).mean())
        report[name] = {
            "n": n,
            "fid_classifier": frechet_distance(feats, reference_feats),
            "kid_classifier": kid,
            "kid_classifier_std": kid_std,
            "kid_subset_size": subset_size,
            "kid_subsets": kid_subsets,
            "reference_size": len(reference_feats),
            "precision": precision,
            "recall": recall,
            "neighbours": neighbours,
            "label_accuracy": accuracy,
        }
    return report


def format_report(report: Mapping[str, Mapping]) -> str:
    """The report as a Markdown table, with a line that says what was compared with what."""
    lines = ["| set | n | fid_classifier | kid_classifier ± std (subset size) | precision | recall | label_accuracy |",
             "|---|---|---|---|---|---|---|"]
    for name, row in report.items():
        accuracy = "n/a" if math.isnan(row["label_accuracy"]) else f"{row['label_accuracy']:.3f}"
        lines.append(
            f"| {name} | {row['n']} | {row['fid_classifier']:.3f} "
            f"| {row['kid_classifier']:.4f} ± {row['kid_classifier_std']:.4f} ({row['kid_subset_size']}) "
            f"| {row['precision']:.3f} | {row['recall']:.3f} | {accuracy} |"
        )
    if report:
        first = next(iter(report.values()))
        lines += ["", f"Each set: n images against {first['reference_size']} training images (FID, KID) and "
                      f"{min(first['n'], first['reference_size'])} of them (precision, recall with k={first['neighbours']}). "
                      f"KID: mean ± std over {first['kid_subsets']} random subsets of {first['kid_subset_size']} from each side. "
                      "label_accuracy: the classifier's class against the label each image was generated for "
                      "(real images: their own label)."]
    return "\n".join(lines)
