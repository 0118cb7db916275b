"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every shard, manifest, checkpoint and gallery file goes through here. The temporary file
sits in the target's own folder because `os.replace` is only atomic within one filesystem.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file name beside `path`; once the block succeeds it is fsynced and renamed over `path`.

    For writers that want a file name rather than a file object (video encoders, for one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp_name)
        with open(tmp_name, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it over `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        write(file)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda file: file.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporaries left behind by a killed writer; returns how many were removed."""
    removed = 0
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _fsync_directory(folder: Path) -> None:
    # The rename itself lives in the directory entry; without this a power cut can undo it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
