"""Fashion-MNIST from Debian's `dataset-fashion-mnist`, written as PNG files under <class>/."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
SPLITS = {"train": "train", "test": "t10k"}
IDX_IMAGE_HEADER, IDX_LABEL_HEADER = 16, 8


def read_idx(split: str, source: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    prefix = SPLITS[split]
    images_path = source / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise FileNotFoundError(
            f"{images_path} is missing: install Debian's dataset-fashion-mnist package "
            "(scripts/setup.sh does), or put your own images in the corpus folder"
        )
    images = np.frombuffer(gzip.decompress(images_path.read_bytes())[IDX_IMAGE_HEADER:], dtype=np.uint8)
    labels_path = source / f"{prefix}-labels-idx1-ubyte.gz"
    labels = np.frombuffer(gzip.decompress(labels_path.read_bytes())[IDX_LABEL_HEADER:], dtype=np.uint8)
    return images.reshape(-1, 28, 28), labels


def write_default_corpus(folder: Path, limit: int | None = None) -> int:
    """Write every Fashion-MNIST image (70,000; `limit` per split for tests) as a PNG file.

    Plain writes, not one fsync per file: `seed_if_empty` makes the whole folder appear at once.
    """
    for name in CLASS_NAMES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    written = 0
    for split in SPLITS:
        images, labels = read_idx(split)
        for index, (pixels, label) in enumerate(zip(images[:limit], labels[:limit])):
            Image.fromarray(pixels).save(folder / CLASS_NAMES[label] / f"{split}-{index:05d}.png")
            written += 1
    return written
