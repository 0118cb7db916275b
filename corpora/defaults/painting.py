"""The colour pictures that scikit-image and scikit-learn ship as package data.

The files are copied as they are (PNG and JPEG), found through the packages' import specs
without calling their loaders: several skimage loaders try to download on first use.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from common.atomic import atomic_write_bytes

PICTURES = {
    "skimage": ("data", (
        "astronaut.png", "chelsea.png", "coffee.png", "color.png", "hubble_deep_field.jpg",
        "ihc.png", "logo.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg",
        "rocket.jpg",
    )),
    "sklearn": ("datasets/images", ("china.jpg", "flower.jpg")),
}


def package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{package} is not installed")
    return Path(spec.submodule_search_locations[0])


def write_default_corpus(folder: Path) -> int:
    written = 0
    for package, (subfolder, names) in PICTURES.items():
        source = package_folder(package) / subfolder
        for name in names:
            atomic_write_bytes(folder / f"{package}-{name}", (source / name).read_bytes())
            written += 1
    return written
