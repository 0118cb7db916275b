"""Fixtures shared by the tests: a throwaway data root and a real Dagster materialize."""
from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from pipelines.definitions import build_resources


def pytest_sessionstart(session):
    import torch

    torch.set_num_threads(1)  # one_torch_thread's count, for the first module's fixtures too


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test, and the module fixtures after it, run at one torch thread: the count the tests'
    child processes train at, so that bit-exact comparisons with them hold whatever a test before
    set (a Dagster materialize configures torch in this process); and the cores are shared."""
    import torch

    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def materialize_asset(data_root: Path):
    """Materialize one asset with a real ephemeral Dagster instance and real resources."""

    def run(asset, config: dict | None = None, instance: dg.DagsterInstance | None = None):
        run_config = {"ops": {asset.key.to_python_identifier(): {"config": config or {}}}}
        return dg.materialize(
            [asset], resources=build_resources(str(data_root)), run_config=run_config,
            instance=instance, raise_on_error=False,
        )

    return run


def materialization_metadata(result: dg.ExecuteInProcessResult, asset) -> dict:
    [materialization] = result.asset_materializations_for_node(asset.op.name)
    return {key: value.value for key, value in materialization.metadata.items()}


def check_outcomes(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def data_version_of(result: dg.ExecuteInProcessResult, asset) -> str:
    [materialization] = result.asset_materializations_for_node(asset.op.name)
    return materialization.tags["dagster/data_version"]


os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
