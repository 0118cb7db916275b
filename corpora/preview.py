"""Small preview pictures of a corpus, for the Dagster UI (kept tiny: they live in the event log)."""
from __future__ import annotations

import math

import cv2
import numpy as np


def contact_sheet(images, columns: int = 8, cell: int = 48, gap: int = 2) -> np.ndarray:
    """Tile uint8 images (an (N, H, W, C) array, or a list of HxWxC arrays of any sizes and one
    channel count) into one picture with square cells of `cell` pixels."""
    count, channels = len(images), images[0].shape[-1]
    rows = max(1, math.ceil(count / columns))
    sheet = np.full((rows * (cell + gap) + gap, columns * (cell + gap) + gap, channels), 255, np.uint8)
    for index, image in enumerate(images):
        resized = cv2.resize(image, (cell, cell), interpolation=cv2.INTER_AREA).reshape(cell, cell, channels)
        top, left = gap + (index // columns) * (cell + gap), gap + (index % columns) * (cell + gap)
        sheet[top : top + cell, left : left + cell] = resized
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
