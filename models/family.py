"""The model families, found rather than listed.

A family is a package: `models/<name>/` (or any importable package named in
$ATELIER_FAMILIES, comma-separated, for families kept outside this repository) whose
`__init__.py` defines `FAMILY`, a `FamilyRecord`. Inside the package, by convention:

- `training.py`: `run_training(request, run)`, what `python -m models.train` calls, and
  `benchmark_family(manifest, profile)`, what `bench/gpu.py` trains;
- `pyfunc.py`: the MLflow PythonModel class named in the record;
- `testing.py`: a tiny instance for the tests that run every family (`VARIANTS`, `tiny`,
  `bundle_round_trip`, `WEIGHTS_LOADERS`, and `TINY_RUN_CONFIG` for its Dagster assets);
- its Dagster side is the module `assets.<name>` (or the record's `dagster_module`), which
  defines `TRAINING_ASSET`, `GALLERY_ASSET` and `ASSETS` (every asset of the family).

Everything that needs "every family" (the code location, the training entry point, the site,
`atelier sample`, the benches, the tests) iterates `families()`.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path

from models.champion import ChampionRule

EXTRA_FAMILIES_ENV = "ATELIER_FAMILIES"
BASE_REQUIREMENTS = ("torch", "numpy", "pandas", "mlflow")  # what every registered model imports
SAMPLE_KINDS = ("image", "midi", "video")  # what a family's samples are, so `atelier sample` knows what to write


@dataclass(frozen=True)
class FamilyRecord:
    name: str  # the registered model and its MLflow experiment, e.g. "music-vae"
    title: str  # what people read on the site, e.g. "Music (VAE)"
    corpus: str  # the corpus it trains on: data/shards/<corpus>/ ("images", "painting", "midi", "video")
    rule: ChampionRule  # when a new version becomes champion
    samples: str  # one of SAMPLE_KINDS
    package: str  # the family's package, e.g. "models.music_vae" (set it to __name__)
    pyfunc_class: str  # the PythonModel class in <package>.pyfunc
    dagster_module: str = ""  # where its assets live; default assets.<last part of package>
    requirements: tuple[str, ...] = ()  # distributions its pyfunc needs beyond BASE_REQUIREMENTS

    def __post_init__(self):
        if self.samples not in SAMPLE_KINDS:
            raise ValueError(f"{self.name}: samples must be one of {SAMPLE_KINDS}, not {self.samples!r}")

    @property
    def key(self) -> str:
        """Its Python name: the training asset's name and its checkpoints folder, e.g. "music_vae"."""
        return self.package.rsplit(".", 1)[-1]

    def run_training(self):
        return importlib.import_module(f"{self.package}.training").run_training

    def pyfunc(self):
        return getattr(importlib.import_module(f"{self.package}.pyfunc"), self.pyfunc_class)()

    def dagster(self):
        return importlib.import_module(self.dagster_module or f"assets.{self.key}")

    def pip_requirements(self) -> list[str]:
        """Each distribution the registered model needs, pinned to the version installed here: the
        environment that trained and evaluated it, so a pin is never typed twice."""
        from importlib.metadata import version

        from packaging.version import Version

        # the public version: a local label such as torch's "+cpu" names a build, not a release on PyPI
        return [f"{name}=={Version(version(name)).public}" for name in (*BASE_REQUIREMENTS, *self.requirements)]

    def code_paths(self) -> list[str]:
        """What a registered model ships: the shared models/ and common/ packages, and the top-level
        package the family lives in when that is elsewhere."""
        root = Path(__file__).resolve().parents[1]
        paths = {root / "models", root / "common"}
        top = importlib.import_module(self.package.split(".", 1)[0])
        paths.add(Path(next(iter(top.__path__))).resolve())
        return sorted(str(path) for path in paths)


def family_packages() -> list[str]:
    import models

    found = [f"models.{module.name}" for module in pkgutil.iter_modules(models.__path__) if module.ispkg]
    extra = [name.strip() for name in os.environ.get(EXTRA_FAMILIES_ENV, "").split(",") if name.strip()]
    return sorted(found) + extra


def families() -> dict[str, FamilyRecord]:
    """Every family, by registered name, in a stable order (models/ first, then $ATELIER_FAMILIES)."""
    records: dict[str, FamilyRecord] = {}
    for package in family_packages():
        record = getattr(importlib.import_module(package), "FAMILY", None)
        if record is None:
            continue
        if record.name in records:
            raise ValueError(f"two families are named {record.name!r}: {records[record.name].package} and {package}")
        records[record.name] = record
    return records


def family(name: str) -> FamilyRecord:
    found = families()
    if name not in found:
        raise KeyError(f"no family named {name!r}; there are {', '.join(found) or 'none'}")
    return found[name]
