"""The image corpus as the family sees it: train and held-out uint8 images with class indices.

Training side only (the classifier, `run_training`, the gallery): reading shards needs corpora/,
which a registered model does not ship, so it is imported where the shards are read.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.batches import LoaderConfig, Rows


@dataclass
class ImageSplit:
    """uint8 (N, H, W, C) arrays and class indices (-1: unlabelled) into `class_names`."""

    train_images: np.ndarray
    train_labels: np.ndarray
    heldout_images: np.ndarray
    heldout_labels: np.ndarray
    class_names: list[str]


def class_names_of(manifest_path: str | Path) -> list[str]:
    """The sorted class names of every image of the manifest (the label column only)."""
    from corpora.readers import read_split

    split = read_split(manifest_path, "images", ["label"])
    return sorted({name for side in split.values() for name in side["label"] if name})


def label_indices(names: Sequence, class_names: Sequence[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index.get(name, -1) for name in names], dtype=np.int64)


def load_image_split(manifest_path: str | Path, max_rows: int | None = None) -> ImageSplit:
    """Train and held-out images of an image shard manifest (with `max_rows`, at most that many of
    each, corpora.readers.read_split); labels index the sorted class names of the whole corpus."""
    from corpora.readers import read_split

    class_names = class_names_of(manifest_path)
    split = read_split(manifest_path, "images", ["pixels", "label"], max_rows=max_rows)
    return ImageSplit(split["train"]["pixels"], label_indices(split["train"]["label"], class_names),
                      split["heldout"]["pixels"], label_indices(split["heldout"]["label"], class_names), class_names)


def training_images(manifest_path: str | Path, loader: LoaderConfig, class_names: Sequence[str]) -> Rows:
    """The training images as the family's rows ("pixels", "label" as class indices), in memory
    or streamed as `loader` decides (corpora.readers.training_rows)."""
    from corpora.readers import training_rows

    return training_rows(manifest_path, "images", ["pixels", "label"], loader,
                         convert={"label": lambda names: label_indices(names, class_names)})
