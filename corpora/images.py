"""Image corpora: any PNG/JPEG/WebP/BMP/GIF file becomes a square uint8 tensor.

Used twice: for the image-GAN corpus (small grayscale images with a class in the path) and
for the painting corpus (colour pictures kept at a larger size for random crops).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePosixPath

import cv2
import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

from corpora.grouping import THUMBNAIL_SIDE
from corpora.ingest import DecodedFile, DecodeTask, Grouping, Modality, Rejected, TableRows
from corpora.shards import TableSpec, TensorColumn

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})
TABLE = "images"
# A re-encoded or resized copy of a picture stays within RMS 6 of its thumbnail (JPEG at quality
# 50: at most 5.8), while 99.9% of Fashion-MNIST pictures are farther than that from every other.
NEAR_IDENTICAL_RMS = 6.0

# Our own size check runs on the header, before any pixel is decoded; Pillow's built-in
# guard would otherwise warn or raise with a different limit.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageCorpusConfig:
    resolution: int = 32
    channels: int = 1  # 1: grayscale, 3: RGB
    max_pixels: int = 64_000_000  # a header claiming more is refused as a decompression bomb
    label_from_path: bool = True  # the folder a file sits in names its class

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if self.resolution < 4:
            raise ValueError(f"resolution must be at least 4, not {self.resolution}")


def table_specs(config: ImageCorpusConfig) -> list[TableSpec]:
    return [
        TableSpec(
            TABLE,
            TensorColumn("pixels", (config.resolution, config.resolution, config.channels), "uint8"),
            {"label": pa.string(), "original_width": pa.int32(), "original_height": pa.int32()},
        )
    ]


def label_of(relpath: str) -> str | None:
    parent = PurePosixPath(relpath).parent
    return parent.name if parent.name else None


def load_image(path: str, channels: int, max_pixels: int) -> np.ndarray:
    """Decode one file to an upright HxWxC uint8 array (C = channels), refusing bombs."""
    try:
        image = Image.open(path)
    except Image.UnidentifiedImageError as exc:
        raise Rejected("not a readable image (unknown or corrupt header)", "decode", "UnidentifiedImage") from exc
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise Rejected(
                f"header claims {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,}",
                "decode",
                "DecompressionBomb",
            )
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise Rejected(f"pixel data is corrupt or truncated: {exc}", "decode", "CorruptImage") from exc
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when there is no tag
        image = _to_channels(image, channels)
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _to_channels(image: Image.Image, channels: int) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:  # flatten onto white, as a viewer would show it
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("L" if channels == 1 else "RGB")


def square_resize(pixels: np.ndarray, resolution: int, enlarge_with: int = cv2.INTER_CUBIC) -> np.ndarray:
    """Centre-crop to a square, then resize (INTER_AREA to shrink, `enlarge_with` to enlarge); keeps HxWxC."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[top : top + side, left : left + side]
    if side == resolution:
        return np.ascontiguousarray(square)
    interpolation = cv2.INTER_AREA if side > resolution else enlarge_with
    resized = cv2.resize(square, (resolution, resolution), interpolation=interpolation)
    return resized.reshape(resolution, resolution, pixels.shape[2])


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """A flat uint8 grey THUMBNAIL_SIDE^2 thumbnail of an HxWxC picture: what near-duplicates share."""
    grey = pixels[:, :, 0] if pixels.shape[2] == 1 else cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMBNAIL_SIDE, THUMBNAIL_SIDE), interpolation=cv2.INTER_AREA).reshape(-1)


def decode(task: DecodeTask) -> DecodedFile:
    config: ImageCorpusConfig = task.config
    original = load_image(task.path, config.channels, config.max_pixels)
    pixels = square_resize(original, config.resolution)
    label = label_of(task.relpath) if config.label_from_path else None
    return DecodedFile(
        content_hash=hashlib.sha256(pixels.tobytes()).hexdigest(),
        tables={
            TABLE: TableRows(
                tensors=pixels[None],
                columns={
                    "label": [label],
                    "original_width": [original.shape[1]],
                    "original_height": [original.shape[0]],
                },
            )
        },
        signatures={TABLE: thumbnail(pixels)[None]},
    )


IMAGES = Modality("images", "images-2", EXTENSIONS, table_specs, decode, chunk_size=256,
                  grouping=Grouping(near_tables=(TABLE,), near_rms=NEAR_IDENTICAL_RMS))
