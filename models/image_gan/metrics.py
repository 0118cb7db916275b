"""The image family's sample-quality report, kept apart from training (as in stylegan2-ada's metrics/).

Inception weights cannot be downloaded here, so FID and KID are computed on the 128-d
embedding of a CNN classifier trained on the same corpus (`models.classifier.FeatureClassifier`).
The numbers are therefore called `fid_classifier` and `kid_classifier`: they rank models on this
corpus, and are NOT comparable with Inception-based FID/KID from papers. Every report carries a
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

from models.classifier import FeatureClassifier, embed_and_classify
from models.distances import (KID_SUBSET_SIZE, KID_SUBSETS, PR_NEIGHBOURS, frechet_distance, kernel_distance,
                              kid_subset_size, memorization, precision_recall)
from models.image_gan.data import ImageSplit
from models.image_gan.networks import Generator
from models.image_gan.sampling import sample

EVAL_SAMPLES = 2000  # per compared set; KID draws subsets of half that
MEMORIZATION_SAMPLES = 256


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
    report, reference_subsets = {}, {}  # the KID sums within the reference's subsets, shared by every set
    for name, labelled in sets.items():
        feats, predicted = embed_and_classify(classifier, labelled.images[:n], device)
        kid, kid_std = kernel_distance(feats, reference_feats, kid_subsets, subset_size, seed, reference_subsets)
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


# --- a trained generator's evaluation ------------------------------------------------------


def evaluation_labels(num_classes: int, count: int) -> np.ndarray | None:
    """The label each evaluation sample is generated for: every class in turn (the held-out set
    is near balanced), so label_accuracy can check each one."""
    return (np.arange(count) % num_classes).astype(np.int64) if num_classes else None


def evaluate(generator: Generator, data: ImageSplit, classifier: FeatureClassifier, untrained: Generator,
             seed: int) -> dict:
    """The metric table (real-vs-real floor, untrained ceiling, model) and memorization."""
    count = min(EVAL_SAMPLES, len(data.heldout_images))
    # Shards are in path order (class folders): a random subset, not the first rows, is the floor.
    chosen = np.sort(np.random.default_rng(seed).choice(len(data.heldout_images), count, replace=False))
    labels = evaluation_labels(generator.num_classes, count)
    samples = {name: LabelledImages(sample(g, count, seed=seed, labels=labels), labels)
               for name, g in (("untrained_generator", untrained), ("model", generator))}
    heldout = LabelledImages(data.heldout_images[chosen], data.heldout_labels[chosen] if data.class_names else None)
    report = gan_report(classifier, data.train_images, heldout, samples, seed=seed)
    copies = memorization(samples["model"].images[:MEMORIZATION_SAMPLES], data.train_images, seed=seed)
    return {"table": report, "memorization": copies}
