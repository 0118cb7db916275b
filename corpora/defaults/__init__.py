"""Default corpora, written from data that installed packages ship; nothing is downloaded.

Each module here has `write_default_corpus(folder)`; `seed_if_empty` runs it into a
temporary sibling folder and renames that into place, so a killed seeding leaves no
half-filled corpus behind that would later pass for a user's data. Each default corpus gets its
licence file, `licences/<corpus>.csv` copied in as LICENSES.csv (docs/licences.md).
"""
from __future__ import annotations

import concurrent.futures
import importlib
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from provenance.licences import LICENCE_FILE_NAMES

DEFAULT_CORPORA = {
    "images": "corpora.defaults.images",
    "painting": "corpora.defaults.painting",
    "midi": "corpora.defaults.midi",
    "video": "corpora.defaults.video",
}
LICENCES_DIR = Path(__file__).resolve().parent / "licences"
SEEDING_WORKERS = 2  # processes that write a default corpus: decoding and encoding its files is the cost


def map_in_workers(fn: Callable, *arguments: Iterable, count: int, workers: int = SEEDING_WORKERS,
                   chunksize: int = 1) -> list:
    """[fn(*args) for each of the `count` argument tuples], in up to `workers` processes. Forkserver,
    not fork: seeding may run inside a threaded process (Dagster), where fork is unsafe."""
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, min(workers, count)), mp_context=context) as pool:
        return list(pool.map(fn, *arguments, chunksize=chunksize))


def default_licence_file(corpus: str) -> Path:
    """The licence table of a default corpus, as shipped with the code."""
    return LICENCES_DIR / f"{corpus}.csv"


def is_empty(folder: Path) -> bool:
    return not folder.exists() or not any(p for p in folder.iterdir() if not p.name.startswith("."))


def seed_if_empty(corpus: str, folder: str | Path) -> int:
    """Fill `folder` with the default `corpus` if it is missing or empty; returns files written."""
    folder = Path(folder)
    if not is_empty(folder):
        return 0
    module = importlib.import_module(DEFAULT_CORPORA[corpus])
    staging = folder.with_name(f".{folder.name}.seeding")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    written = module.write_default_corpus(staging)
    shutil.copyfile(default_licence_file(corpus), staging / LICENCE_FILE_NAMES[0])
    os.sync()  # the files' contents reach the disk before the rename makes them the corpus
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return written
