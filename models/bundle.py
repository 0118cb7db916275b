"""A family's exported weights and settings (`bundle.pt`): written atomically, read weights-only.

A bundle holds plain values (tensors, numbers, strings, lists, dicts) under a `format` string
that names the family and its version, so a bundle from another family or an older layout is
refused with a clear error instead of being half-loaded.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def save_bundle(bundle: dict, path: str | Path) -> Path:
    from common.atomic import atomic_write

    return atomic_write(path, lambda file: torch.save(bundle, file))


def load_bundle(path: str | Path, formats: Sequence[str]) -> dict:
    """The bundle at `path` if its format is one of `formats`. weights_only: a bundle may come
    from a registry, and a pickle from elsewhere must not run code here."""
    bundle = torch.load(path, map_location="cpu", weights_only=True)
    if bundle.get("format") not in formats:
        raise ValueError(f"{path}: a bundle of format {bundle.get('format')!r}, not {' or '.join(formats)}")
    return bundle


def as_bundle(bundle: dict | str | Path, formats: Sequence[str]) -> dict:
    """`bundle` itself when it is already one (its format checked), else the bundle read from that path."""
    if not isinstance(bundle, dict):
        return load_bundle(bundle, formats)
    if bundle.get("format") not in formats:
        raise ValueError(f"a bundle of format {bundle.get('format')!r}, not {' or '.join(formats)}")
    return bundle
