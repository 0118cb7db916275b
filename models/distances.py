"""Distances between sets of features or pictures, kept apart from any one family: Fréchet
distance, KID, precision and recall (Kynkäänniemi et al. 2019), and nearest-neighbour
memorization in pixel space."""
from __future__ import annotations

import numpy as np
import torch

KID_DEGREE, KID_COEF0 = 3, 1.0  # k(x, y) = (x.y / d + 1)^3, as in Binkowski et al. 2018
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
PR_NEIGHBOURS = 3  # k of the k-NN radii (Kynkäänniemi et al. use 3)
DISTANCE_CHUNK = 1024  # query rows per cdist block, to bound memory
SQRTM_EPS = 1e-6  # added to covariance diagonals when sqrtm of a singular product fails


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
                    subset_size: int = KID_SUBSET_SIZE, seed: int = 0,
                    within_b: dict[bytes, float] | None = None) -> tuple[float, float]:
    """KID: unbiased MMD^2 with a cubic polynomial kernel, averaged over random subsets of
    `subset_size` (capped at the set sizes). Returns (mean, std over subsets). Unlike FID it
    is unbiased in the sample size.

    `within_b`: a dict shared by calls against the same `feats_b` (several sets against one
    reference); it keeps the kernel sum within each subset of `feats_b` drawn, a third of the work.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    within_b = {} if within_b is None else within_b

    def kernel(x, y):
        product = x @ y.T
        product /= d
        product += KID_COEF0
        power = product.copy()
        for _ in range(KID_DEGREE - 1):  # products: np.power with an integer exponent is ~8x slower
            power *= product
        return power

    def within(x) -> float:
        k = kernel(x, x)
        return float(k.sum() - np.trace(k))

    values = []
    for _ in range(num_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y_index = rng.choice(len(b), m, replace=False)
        key = y_index.tobytes()
        if key not in within_b:
            within_b[key] = within(b[y_index])
        values.append((within(x) + within_b[key]) / (m * (m - 1)) - 2 * kernel(x, b[y_index]).mean())
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
