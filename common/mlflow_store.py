"""Where the project's MLflow store lives, and which registered version a model reference names.

Dagster-free, so that `atelier sample` needs only MLflow; the registry resource, `atelier ui`
and `atelier sample` all ask here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

TRACKING_URI_ENV, REGISTRY_URI_ENV = "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"  # MLflow's own variables


def local_store(data_root: str | os.PathLike) -> tuple[str, Path]:
    """The SQLite tracking URI and the artifact folder under a data root."""
    folder = Path(data_root) / "mlflow"
    return f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts"


def tracking_uri(data_root: str | os.PathLike) -> str:
    """`$MLFLOW_TRACKING_URI` when set (a tracking server), else the store under the data root."""
    return os.environ.get(TRACKING_URI_ENV) or local_store(data_root)[0]


def split_reference(reference: str) -> tuple[str, str]:
    """`name@alias`, `name/version` or a `models:/` URI as (name, alias or version)."""
    path = reference.removeprefix("models:/")
    for separator in "@/":
        name, found, ref = path.partition(separator)
        if found and name and ref:
            return name, ref
    raise ValueError(f"expected name@alias or name/version, not {reference!r}")


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version behind `name@alias`, or None if the alias (or the model) is missing.

    Reads the model's alias map rather than catching get_model_version_by_alias's error: the SQL
    store reports a missing alias as INVALID_PARAMETER_VALUE, too broad to catch."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_registered_model(name).aliases.get(alias)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return None if version is None else client.get_model_version(name, str(version))


def resolve_version(client: MlflowClient, name: str, alias_or_version: str | int) -> ModelVersion:
    """The registered version a number or an alias names; LookupError for a missing alias."""
    ref = str(alias_or_version)
    found = client.get_model_version(name, ref) if ref.isdigit() else version_by_alias(client, name, ref)
    if found is None:
        raise LookupError(f"registered model {name!r} has no alias {ref!r}")
    return found
