"""Image corpora: any PNG/JPEG/WebP/BMP/GIF file becomes a square uint8 tensor.

Used twice: for the image-GAN corpus (small grayscale images with a class in the path) and
for the painting corpus (colour pictures kept at a larger size for random crops).
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from functools import lru_cache
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
    return _folder_name(relpath.rpartition("/")[0])


@lru_cache(maxsize=4096)
def _folder_name(folder: str) -> str | None:  # a corpus has few folders and many files in each
    name = PurePosixPath(folder).name
    return name if name else None


# --- a fast path for plain 8-bit PNG files ---------------------------------------------------
# OpenCV decodes a PNG without Pillow's per-file Python work. It is taken only where both give
# the same pixels: 8-bit grey or RGB, no transparency (tRNS), no orientation (an eXIf chunk, or
# a text chunk Pillow reads one from: "Raw profile type exif", XMP), and no chunk Pillow would
# act on. Everything else, and every file OpenCV cannot decode, takes Pillow's path,
# which also gives the reasons for rejections.

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHUNK = struct.Struct(">I4s")
_PNG_IHDR = struct.Struct(">IIBBBBB")  # width, height, bit depth, colour type, compression, filter, interlace
_PNG_GREY, _PNG_RGB = 0, 2
# chunks that change no pixel in either decoder (Pillow applies no gamma or ICC profile on load, nor does OpenCV)
_PNG_INERT = frozenset({b"IDAT", b"IEND", b"pHYs", b"tIME", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"bKGD"})
_PNG_TEXT = frozenset({b"tEXt", b"zTXt", b"iTXt"})  # inert unless the keyword names EXIF or XMP data


def _plain_png(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, colour type) of an 8-bit grey or RGB PNG made only of inert chunks, else None."""
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, _ = _PNG_IHDR.unpack_from(data, 16)
    if depth != 8 or colour not in (_PNG_GREY, _PNG_RGB):
        return None
    position, end = 33, len(data)
    while position + 8 <= end:
        length, kind = _PNG_CHUNK.unpack_from(data, position)
        if kind in _PNG_TEXT:
            keyword = data[position + 8 : position + 8 + min(length, 80)].split(b"\0", 1)[0].lower()
            if b"exif" in keyword or b"xmp" in keyword:
                return None
        elif kind not in _PNG_INERT:
            return None
        position += 12 + length
        if kind == b"IEND":
            return width, height, colour
    return None


def _grey_like_pillow(rgb: np.ndarray) -> np.ndarray:
    """Pillow's RGB -> L (ITU-R 601-2 luma in 16-bit fixed point, rounded): the same bytes as convert("L")."""
    weighted = rgb.astype(np.uint32) * np.array([19595, 38470, 7471], dtype=np.uint32)
    return ((weighted.sum(axis=2, dtype=np.uint32) + 0x8000) >> 16).astype(np.uint8)


def _load_plain_png(data: bytes, channels: int, max_pixels: int) -> np.ndarray | None:
    header = _plain_png(data)
    if header is None:
        return None
    width, height, colour = header
    if width * height > max_pixels:
        return None  # Pillow's path refuses it with the reason
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.shape[:2] != (height, width):
        return None
    if colour == _PNG_GREY:
        if pixels.ndim != 2:
            return None
        return pixels[:, :, None] if channels == 1 else np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        return None
    rgb = pixels[:, :, ::-1]  # OpenCV gives BGR
    return _grey_like_pillow(rgb)[:, :, None] if channels == 1 else np.ascontiguousarray(rgb)


def load_image(path: str, channels: int, max_pixels: int) -> np.ndarray:
    """Decode one file to an upright HxWxC uint8 array (C = channels), refusing bombs."""
    if path.lower().endswith(".png"):
        with open(path, "rb") as file:
            data = file.read()
        pixels = _load_plain_png(data, channels, max_pixels)
        if pixels is not None:
            return pixels
    return _load_with_pillow(path, channels, max_pixels)


def _load_with_pillow(path: str, channels: int, max_pixels: int) -> np.ndarray:
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
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)  # convert() to its own mode is a copy


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
