"""The image corpus as the family sees it: train and held-out uint8 images with class indices.

Training side only (the classifier, `run_training`, the gallery): reading shards needs corpora/,
which a registered model does not ship, so it is imported where the shards are read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class ImageSplit:
    """uint8 (N, H, W, C) arrays and class indices (-1: unlabelled) into `class_names`."""

    train_images: np.ndarray
    train_labels: np.ndarray
    heldout_images: np.ndarray
    heldout_labels: np.ndarray
    class_names: list[str]


def load_image_split(manifest_path: str | Path) -> ImageSplit:
    """Train and held-out images of an image shard manifest; labels index the sorted class names."""
    from corpora.readers import read_split

    split = read_split(manifest_path, "images", ["pixels", "label"])
    names = {side: ["" if name is None else name for name in split[side]["label"]] for side in split}
    class_names = sorted((set(names["train"]) | set(names["heldout"])) - {""})
    index = {name: i for i, name in enumerate(class_names)}

    def labels(side: str) -> np.ndarray:
        return np.array([index.get(name, -1) for name in names[side]], dtype=np.int64)

    return ImageSplit(split["train"]["pixels"], labels("train"), split["heldout"]["pixels"], labels("heldout"),
                      class_names)
