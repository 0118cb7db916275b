"""Fashion-MNIST from Debian's `dataset-fashion-mnist`, written as PNG files under <class>/.

The 70,000 files are written by worker processes, a range of one split each: Pillow's PNG
encoding and the file creation are most of the cost, and they run in parallel.
"""
from __future__ import annotations

import functools
import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image

from corpora.defaults import SEEDING_WORKERS, map_in_workers

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
SPLITS = {"train": "train", "test": "t10k"}
IDX_IMAGE_HEADER, IDX_LABEL_HEADER = 16, 8
FILES_PER_TASK = 5000


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


def _image_count(split: str, source: Path = FASHION_MNIST_DIR) -> int:
    """The number of images in a split, from its IDX header (a missing file says what to install)."""
    images_path = source / f"{SPLITS[split]}-images-idx3-ubyte.gz"
    if not images_path.exists():
        read_idx(split, source)  # raises, naming the package
    with gzip.open(images_path) as file:
        return int.from_bytes(file.read(8)[4:8], "big")


@functools.lru_cache(maxsize=len(SPLITS))  # a worker writes several ranges of a split
def _split_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    return read_idx(split)


def write_range(folder: str, split: str, start: int, stop: int) -> int:
    """Write images [start, stop) of `split` as <class>/<split>-<index>.png; returns the count.

    Plain writes, not one fsync per file: `seed_if_empty` makes the whole folder appear at once.
    Pillow encodes into memory and one write makes the file: the same bytes as Image.save, for
    less per-file work.
    """
    images, labels = _split_arrays(split)
    for index in range(start, stop):
        encoded = io.BytesIO()
        Image.fromarray(images[index]).save(encoded, format="PNG")
        with open(Path(folder) / CLASS_NAMES[labels[index]] / f"{split}-{index:05d}.png", "wb") as file:
            file.write(encoded.getbuffer())
    return stop - start


def write_default_corpus(folder: Path, limit: int | None = None, workers: int = SEEDING_WORKERS) -> int:
    """Write every Fashion-MNIST image (70,000; `limit` per split for tests) as a PNG file."""
    for name in CLASS_NAMES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    tasks = []
    for split in SPLITS:
        count = _image_count(split) if limit is None else limit
        tasks += [(str(folder), split, start, min(start + FILES_PER_TASK, count))
                  for start in range(0, count, FILES_PER_TASK)]
    return sum(map_in_workers(write_range, *zip(*tasks), count=len(tasks), workers=workers))
