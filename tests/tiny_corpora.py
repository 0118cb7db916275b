"""Four small real corpora (PNG, JPEG, MIDI, MP4) in data/raw/<corpus>/, for tests that run
the whole pipeline in minutes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from corpora.video import write_video
from tests.test_music_assets import write_chorales

IMAGE_CLASSES = ("bars", "rings", "dots")
IMAGES_PER_CLASS, IMAGE_SIDE = 16, 28
PAINTINGS, PAINTING_SIDE = 5, 160
VIDEOS, VIDEO_FRAMES, VIDEO_SIDE, VIDEO_FPS = 6, 40, 64, 10.0


def class_picture(label: int, index: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[:IMAGE_SIDE, :IMAGE_SIDE]
    centre = IMAGE_SIDE / 2 + rng.uniform(-3, 3, size=2)
    if label == 0:
        shape = (x // 4 + index) % 2 == 0
    elif label == 1:
        radius = np.hypot(y - centre[0], x - centre[1])
        shape = (radius > 6) & (radius < 10)
    else:
        shape = ((y // 5) + (x // 5)) % 2 == 0
    noise = rng.integers(0, 30, size=shape.shape)
    return np.clip(shape * 200 + noise, 0, 255).astype(np.uint8)


def write_images(folder: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(IMAGE_CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(IMAGES_PER_CLASS):
            Image.fromarray(class_picture(label, index, rng)).save(folder / name / f"{index:02d}.png")


def write_paintings(folder: Path, seed: int = 0) -> None:
    """Colour gradients with blobs: different palettes per picture, saved as JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:PAINTING_SIDE, :PAINTING_SIDE] / PAINTING_SIDE
    for index in range(PAINTINGS):
        palette = rng.uniform(0.2, 1.0, size=(3, 3))
        picture = np.stack([palette[c, 0] * x + palette[c, 1] * y + palette[c, 2] * np.sin(8 * x * (index + 1))
                            for c in range(3)], axis=-1)
        picture = (255 * (picture - picture.min()) / np.ptp(picture)).astype(np.uint8)
        Image.fromarray(picture).save(folder / f"painting-{index}.jpg", quality=92)


def write_videos(folder: Path, seed: int = 0) -> None:
    """A bright square bouncing on a dark background, a different speed per clip."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    size = 14
    for index in range(VIDEOS):
        frames = np.full((VIDEO_FRAMES, VIDEO_SIDE, VIDEO_SIDE, 3), 16, np.uint8)
        position, velocity = rng.uniform(0, VIDEO_SIDE - size, 2), rng.uniform(-4, 4, 2)
        for t in range(VIDEO_FRAMES):
            position += velocity
            for axis in range(2):
                if not 0 <= position[axis] <= VIDEO_SIDE - size:
                    velocity[axis] *= -1
                    position[axis] = np.clip(position[axis], 0, VIDEO_SIDE - size)
            top, left = position.astype(int)
            frames[t, top:top + size, left:left + size] = 230
        write_video(folder / f"square-{index}.mp4", frames, VIDEO_FPS)


def write_all(raw: Path) -> None:
    write_images(raw / "images")
    write_paintings(raw / "painting")
    write_chorales(raw / "midi", pieces=10)
    write_videos(raw / "video")
