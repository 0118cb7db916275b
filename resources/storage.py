"""Where everything lives on disk. One data root; every other path is derived from it."""
from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

DATA_ROOT_ENV = "ATELIER_DATA_ROOT"


def default_data_root() -> str:
    """`$ATELIER_DATA_ROOT`, else `data/` in the working directory (the project root)."""
    return str(Path(os.environ.get(DATA_ROOT_ENV, "data")).resolve())


class StorageResource(dg.ConfigurableResource):
    """Paths under the data root: raw corpora, shards, checkpoints, galleries, MLflow store."""

    data_root: str

    @property
    def root(self) -> Path:
        return Path(self.data_root)

    def raw_dir(self, corpus: str) -> Path:
        return self.root / "raw" / corpus

    def shards_dir(self, corpus: str) -> Path:
        return self.root / "shards" / corpus

    def checkpoints_dir(self, family: str) -> Path:
        return self.root / "checkpoints" / family

    def galleries_dir(self, family: str) -> Path:
        return self.root / "galleries" / family

    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"
