"""Small, real media files for the reliability tests, written with the libraries directly.

Nothing here goes through the module under test (corpora/), so a bug in the corpus code
cannot make its own inputs look right.
"""
from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def noise_image(seed: int, height: int = 16, width: int = 16, channels: int = 1) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def write_pngs(folder: Path, count: int, seed: int = 0, classes: int = 3, size: int = 12) -> list[str]:
    """`count` distinct small grayscale PNGs under folder/<class>/; returns their relative paths."""
    rng = np.random.default_rng(seed)
    relpaths = []
    for index in range(count):
        relpath = f"class-{index % classes}/{index:05d}.png"
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
        pixels[0, 0], pixels[0, 1] = index % 256, index // 256  # distinct even if the RNG repeated
        path.write_bytes(png_bytes(pixels))
        relpaths.append(relpath)
    return relpaths


def midi_bytes(seed: int, voices: int = 4, steps: int = 64, qpm: float = 120.0) -> bytes:
    """A few monophonic voices of random notes on the 16th grid, written with pretty_midi."""
    import pretty_midi

    rng = np.random.default_rng(seed)
    step_s = 60.0 / qpm / 4
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=qpm)
    for voice in range(voices):
        instrument = pretty_midi.Instrument(program=int(rng.integers(0, 80)), name=f"voice {voice}")
        low = 40 + 8 * (voices - 1 - voice)
        step = 0
        while step < steps:
            duration = int(rng.choice([1, 2, 4]))
            pitch = int(rng.integers(low, low + 12))
            instrument.notes.append(pretty_midi.Note(velocity=int(rng.integers(40, 120)), pitch=pitch,
                                                     start=step * step_s, end=(step + duration) * step_s))
            step += duration
        pm.instruments.append(instrument)
    out = io.BytesIO()
    pm.write(out)
    return out.getvalue()


def moving_frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Moving gradients plus a little noise: every frame differs, and they compress well."""
    yy, xx = np.mgrid[:height, :width]
    rng = np.random.default_rng(seed)
    frames = np.stack(
        [np.stack([(xx * 9 + 11 * t) % 256, (yy * 7 + 5 * t) % 256, (xx + yy + 13 * t + seed * 40) % 256], -1)
         for t in range(count)]
    )
    return (frames + rng.integers(0, 8, size=frames.shape)).clip(0, 255).astype(np.uint8)


def mp4_bytes(frames: np.ndarray, fps: int, path: Path, faststart: bool = False) -> bytes:
    """H.264 in MP4 written with PyAV; moov at the end unless `faststart`."""
    import av

    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps), options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")))
        container.mux(stream.encode(None))
    return path.read_bytes()


def files_under(root: Path) -> set[str]:
    """Every file, directory and link under root (relative, as bytes-safe strings), for before/after diffs."""
    import os

    found = set()
    for folder, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            full = os.path.join(folder, name)
            found.add(os.fsdecode(os.path.relpath(full, os.fsencode(root))))
    return found
