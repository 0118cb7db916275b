"""Eight Van Gogh paintings (public domain) from Debian's `gcompris-qt-data`.

GCompris's "details" activity ships them as WebP pictures of 376-668 x 500 pixels inside a Qt
resource bundle (`details.rcc`); the file's README marks each painting "Public domain" (the
bundle's other pictures are CC-BY-SA photographs of monuments, and are left out). They are
copied out byte for byte, so nothing is re-encoded; the ingest reads WebP. The Qt resource
format is read here, with no Qt: docs/painting-gan.md says how.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

from common.atomic import atomic_write_bytes

DETAILS_BUNDLE = Path("/usr/share/gcompris-qt/rcc/details.rcc")
PICTURE_FOLDER = "/gcompris/src/activities/details/resource/image"
PAINTINGS = (  # "<name>_background.webp" in PICTURE_FOLDER
    "Eglise_dAuvers-sur-Oise", "Gogh4", "PortraitOfPereTanguy", "Van_Gogh_The_Night_Cafe",
    "VincentVanGogh0012", "VincentVanGogh0013", "VincentVanGogh0019", "VincentVanGoghBridge",
)

# Qt resource bundle layout (version 2 and 3): a header, then a tree of fixed-size nodes
RCC_MAGIC = b"qres"
RCC_HEADER = struct.Struct(">IIII")  # version, tree offset, data offset, names offset
NODE_SIZE = 22  # name offset u32, flags u16, then directory (count, first child) or file (locale, data offset), mtime u64
FLAG_ZLIB, FLAG_DIRECTORY, FLAG_ZSTD = 0x1, 0x2, 0x4
ZLIB_LENGTH_PREFIX = 4  # qCompress puts the uncompressed length in front of the zlib stream


def read_qt_resources(bundle: bytes) -> dict[str, bytes]:
    """Every file of a Qt resource bundle (.rcc, format 2 or 3) by its path, e.g. "/a/b.png"."""
    if bundle[:4] != RCC_MAGIC:
        raise ValueError("not a Qt resource bundle")
    version, tree, data, names = RCC_HEADER.unpack_from(bundle, 4)
    if version not in (2, 3):
        raise ValueError(f"Qt resource format {version} is not supported (2 and 3 are)")

    def name_at(offset: int) -> str:
        (length,) = struct.unpack_from(">H", bundle, names + offset)
        start = names + offset + 6  # after the length and a u32 hash
        return bundle[start : start + 2 * length].decode("utf-16-be")

    files: dict[str, bytes] = {}
    pending = [(0, "")]  # (node index, its parent's path)
    while pending:
        index, parent = pending.pop()
        node = tree + index * NODE_SIZE
        name_offset, flags = struct.unpack_from(">IH", bundle, node)
        path = f"{parent}/{name_at(name_offset)}" if index else ""
        if flags & FLAG_DIRECTORY:
            count, first = struct.unpack_from(">II", bundle, node + 6)
            pending += [(first + child, path) for child in range(count)]
            continue
        (offset,) = struct.unpack_from(">I", bundle, node + 10)
        (length,) = struct.unpack_from(">I", bundle, data + offset)
        payload = bundle[data + offset + 4 : data + offset + 4 + length]
        if flags & FLAG_ZSTD:
            raise ValueError(f"{path} is zstd-compressed, which this reader does not support")
        files[path] = zlib.decompress(payload[ZLIB_LENGTH_PREFIX:]) if flags & FLAG_ZLIB else payload
    return files


def write_default_corpus(folder: Path, bundle_path: Path = DETAILS_BUNDLE) -> int:
    if not bundle_path.exists():
        raise FileNotFoundError(
            f"{bundle_path} is missing: install Debian's gcompris-qt-data package "
            "(scripts/setup.sh does), or put your own pictures in the corpus folder"
        )
    files = read_qt_resources(bundle_path.read_bytes())
    for name in PAINTINGS:
        atomic_write_bytes(folder / f"van-gogh-{name}.webp", files[f"{PICTURE_FOLDER}/{name}_background.webp"])
    return len(PAINTINGS)
