"""Small pictures for the Dagster UI and the galleries: contact sheets of images (corpus previews are kept
tiny: they live in the event log), and piano rolls."""
from __future__ import annotations

import math

import cv2
import numpy as np


def contact_sheet(images, columns: int = 8, cell: int | None = 48, gap: int = 2) -> np.ndarray:
    """Tile uint8 images into one picture, `columns` to a row, on white with `gap` pixels between
    the cells and around them.

    `images`: an (N, H, W, C) array, or a sequence of HxWxC arrays with one channel count in
    which None leaves its cell empty (a grid's corner). `cell`: the side of the square cells,
    every image resized to it (so any sizes mix); None keeps the images' own size, which they
    must then share (pixels stay as they are, for model samples)."""
    present = [image for image in images if image is not None]
    if not present:
        raise ValueError("a contact sheet needs at least one image")
    count, channels = len(images), present[0].shape[-1]
    height, width = (cell, cell) if cell is not None else present[0].shape[:2]
    rows = max(1, math.ceil(count / columns))
    sheet = np.full((rows * (height + gap) + gap, columns * (width + gap) + gap, channels), 255, np.uint8)
    for index, image in enumerate(images):
        if image is None:
            continue
        if cell is not None:
            image = cv2.resize(image, (cell, cell), interpolation=cv2.INTER_AREA).reshape(cell, cell, channels)
        elif image.shape[:2] != (height, width):
            raise ValueError(f"with cell=None every image must be {height}x{width}, not {image.shape[0]}x{image.shape[1]}")
        top, left = gap + (index // columns) * (height + gap), gap + (index % columns) * (width + gap)
        sheet[top : top + height, left : left + width] = image
    return sheet


def pianoroll_picture(
    pitch: np.ndarray, onset: np.ndarray, duration: np.ndarray, max_steps: int = 256, scale: int = 2
) -> np.ndarray:
    """A piano roll (pitch up, time right) of notes given in steps, as a grayscale uint8 image."""
    if len(pitch) == 0:
        return np.full((16, 16, 1), 255, np.uint8)
    low, high = int(pitch.min()), int(pitch.max())
    roll = np.full((high - low + 1, max_steps), 255, np.uint8)
    for p, start, length in zip(pitch, onset, duration):
        if start < max_steps:
            roll[high - p, start : min(start + max(length, 1), max_steps)] = 0
            roll[high - p, start] = 96  # a lighter first step shows where repeated notes start
    big = np.repeat(np.repeat(roll, scale * 2, axis=0), scale, axis=1)
    return big[:, :, None]
