"""MlflowRegistry against a real SQLite tracking store under tmp_path (no server, no network)."""

import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest

from common.mlflow_store import split_reference
from resources.mlflow_registry import LINEAGE_TAG_KEYS, MlflowRegistry, git_commit


# The pyfunc model lives in its own small module, shipped with the model through code_paths,
# so the fresh process below imports it from the model's files, never from this project.
SAMPLER_MODULE = "atelier_tiny_sampler"
SAMPLER_SOURCE = '''
import json

import mlflow.pyfunc
import numpy as np
import pandas as pd


class TinySampler(mlflow.pyfunc.PythonModel):
    """predict(n, seed) -> n rows of seeded noise times the artifact's scale."""

    def load_context(self, context):
        with open(context.artifacts["config"]) as fh:
            self.scale = json.load(fh)["scale"]

    def predict(self, context, model_input, params=None):
        n, seed = int(model_input["n"].iloc[0]), int(model_input["seed"].iloc[0])
        rng = np.random.default_rng(seed)
        return pd.DataFrame({"x": rng.standard_normal(n) * self.scale})
'''

# Runs in a fresh interpreter: only mlflow (and pandas, which it depends on) is imported.
FRESH_LOAD = textwrap.dedent("""
    import json, sys
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(sys.argv[1])
    out = model.predict(pd.DataFrame({"n": [4], "seed": [7]}))
    impl = type(model.unwrap_python_model())
    print(json.dumps({
        "x": out["x"].tolist(),
        "sampler_file": sys.modules[impl.__module__].__file__,
        "project_modules": sorted(
            m for m in sys.modules if m.split(".")[0] in ("resources", "assets", "pipelines")
        ),
    }))
""")


def expected_sample(n: int, seed: int, scale: float) -> list[float]:
    return (np.random.default_rng(seed).standard_normal(n) * scale).tolist()


def assert_cwd_clean(cwd: Path) -> None:
    """MLflow's defaults (./mlruns, ./mlflow.db) must never be used."""
    assert sorted(p.name for p in cwd.iterdir()) == []


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One initialised store for the module (a fresh DB costs seconds), run from an empty CWD."""
    root = tmp_path_factory.mktemp("store")
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        registry = MlflowRegistry(tracking_uri=f"sqlite:///{root}/db/mlflow.db")
        started = time.perf_counter()
        registry.initialize()
        print(f"initialize on a fresh DB: {time.perf_counter() - started:.2f}s")
        yield registry, root, cwd


@pytest.fixture(scope="module")
def sampler(tmp_path_factory):
    """Import the sampler module from a file, as a trainer's model module would be."""
    src = tmp_path_factory.mktemp("sampler_src") / f"{SAMPLER_MODULE}.py"
    src.write_text(SAMPLER_SOURCE)
    spec = importlib.util.spec_from_file_location(SAMPLER_MODULE, src)
    module = importlib.util.module_from_spec(spec)
    sys.modules[SAMPLER_MODULE] = module
    spec.loader.exec_module(module)
    yield module, src
    sys.modules.pop(SAMPLER_MODULE, None)


def test_initialize_is_idempotent_and_uses_explicit_artifact_root(store):
    registry, root, cwd = store
    assert (root / "db" / "mlflow.db").is_file()
    started = time.perf_counter()
    registry.initialize()
    registry.initialize()
    assert time.perf_counter() - started < 5  # only a schema check, no migration
    client = registry.client()
    artifacts = root / "db" / "artifacts"
    assert registry.resolved_artifact_root() == str(artifacts)
    # the Default experiment is created by initialize(), under our root, not <cwd>/mlruns
    assert str(artifacts / "0") in client.get_experiment("0").artifact_location
    experiment_id = registry.ensure_experiment("image-gan")
    assert registry.ensure_experiment("image-gan") == experiment_id
    assert client.get_experiment(experiment_id).artifact_location.endswith(
        str(artifacts / "image-gan")
    )
    assert_cwd_clean(cwd)


def test_run_is_finished_with_params_metrics_tags(store):
    registry, _, cwd = store
    client = registry.client()
    tags = registry.lineage_tags(
        dagster_run_id="dagster-run-1", asset_key=dg.AssetKey(["models", "image_gan"]),
        code_version="v3", data_version="manifest-abc", config_hash="cfg-123",
    )
    with registry.start_run("tracking", run_name="ok", tags=tags) as run:
        run_id = run.info.run_id
        client.log_param(run_id, "lr", 0.001)
        for step, loss in enumerate([1.0, 0.5, 0.25]):
            client.log_metric(run_id, "loss", loss, step=step)
    stored = client.get_run(run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.run_name == "ok"
    assert stored.data.params == {"lr": "0.001"}
    assert stored.data.metrics == {"loss": 0.25}
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 0.5, 0.25]
    assert stored.data.tags["dagster_asset_key"] == "models/image_gan"
    assert stored.data.tags["data_version"] == "manifest-abc"
    assert stored.data.tags["git_commit"] == git_commit()
    assert set(LINEAGE_TAG_KEYS) <= set(stored.data.tags)
    assert mlflow.active_run() is None  # nothing fluent was touched
    assert_cwd_clean(cwd)


def test_run_that_raises_is_failed(store):
    registry, _, cwd = store
    with pytest.raises(RuntimeError, match="boom"):
        with registry.start_run("tracking", run_name="bad") as run:
            raise RuntimeError("boom")
    assert registry.client().get_run(run.info.run_id).info.status == "FAILED"
    assert_cwd_clean(cwd)


def test_lineage_tags_and_model_uri():
    tags = MlflowRegistry.lineage_tags(dagster_run_id="r", asset_key="a/b", commit="abc123")
    assert tags == {
        "dagster_run_id": "r", "dagster_asset_key": "a/b", "code_version": "unknown",
        "git_commit": "abc123", "data_version": "unknown", "config_hash": "unknown",
        "mlflow.source.git.commit": "abc123",
    }
    assert git_commit() == "unknown" or len(git_commit()) == 40
    assert MlflowRegistry.model_uri("image-gan", "champion") == "models:/image-gan@champion"
    assert MlflowRegistry.model_uri("image-gan", 3) == "models:/image-gan/3"
    assert MlflowRegistry.model_uri("image-gan", "3") == "models:/image-gan/3"


def test_a_model_reference_splits_into_name_and_alias_or_version():
    assert split_reference("image-gan@champion") == split_reference("models:/image-gan@champion") == ("image-gan", "champion")
    assert split_reference("image-gan/3") == split_reference("models:/image-gan/3") == ("image-gan", "3")
    for bad in ("image-gan", "@champion", "image-gan/", "models:/"):
        with pytest.raises(ValueError, match="expected name@alias or name/version"):
            split_reference(bad)


def test_register_twice_alias_and_load_in_fresh_process(store, sampler, tmp_path, monkeypatch):
    registry, _, cwd = store
    module, src = sampler
    client = registry.client()
    name = "tiny-sampler"
    uri_before, env_before = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    assert registry.get_version_by_alias(name, "champion") is None  # no such model yet

    example = pd.DataFrame({"n": [3], "seed": [0]})
    signature = mlflow.models.infer_signature(example, pd.DataFrame({"x": [0.0, 1.0, 2.0]}))
    versions, run_ids = [], []
    for scale in (2.0, -1.0):
        config = tmp_path / f"config-{scale}.json"
        config.write_text(json.dumps({"scale": scale}))
        tags = registry.lineage_tags(dagster_run_id=f"dagster-{scale}", asset_key="tiny")
        with registry.start_run("tiny-family", run_name=f"scale {scale}", tags=tags) as run:
            client.log_param(run.info.run_id, "scale", scale)
            started = time.perf_counter()
            info, version = registry.log_pyfunc_model(
                run.info.run_id, "sampler", module.TinySampler(),
                artifacts={"config": str(config)}, registered_model_name=name,
                input_example=example, signature=signature, code_paths=[str(src)],
                pip_requirements=[f"mlflow=={mlflow.__version__}", "numpy", "pandas"],
            )
            print(f"log_pyfunc_model: {time.perf_counter() - started:.2f}s")
        versions.append(version)
        run_ids.append(run.info.run_id)
        assert info.model_uri.startswith("models:/m-")
        assert str(info.registered_model_version) == version
        logged = client.get_logged_model(info.model_id)
        assert logged.status.to_proto() == logged.status.READY.to_proto()
        assert logged.source_run_id == run.info.run_id
        assert logged.tags["dagster_run_id"] == f"dagster-{scale}"
        stored = client.get_run(run.info.run_id)
        assert stored.info.status == "FINISHED"
        assert [o.model_id for o in stored.outputs.model_outputs] == [info.model_id]

    assert versions == ["1", "2"]
    for version, run_id in zip(versions, run_ids):
        mv = client.get_model_version(name, version)
        assert mv.run_id == run_id and mv.status == "READY"
        assert mv.source.startswith("models:/m-")
        assert mv.tags["dagster_asset_key"] == "tiny"
    # no global state leaked: tracking URI, its env var, active run
    assert (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")) == (
        uri_before, env_before,
    )
    assert mlflow.active_run() is None

    registry.set_alias(name, "champion", 1)
    assert str(registry.get_version_by_alias(name, "champion").version) == "1"
    assert registry.get_version_by_alias(name, "challenger") is None

    # in-process load through the resource's own client
    model, mv = registry.load_pyfunc_model(name, "champion", dst_dir=str(tmp_path / "dl"))
    assert str(mv.version) == "1" and mv.run_id == run_ids[0]
    sample = model.predict(pd.DataFrame({"n": [4], "seed": [7]}))
    assert sample["x"].tolist() == pytest.approx(expected_sample(4, 7, 2.0))

    # without a folder, as the galleries load: nothing stays in the temporary folder, nor on sys.path
    scratch = tmp_path / "tempdir"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    path_before = list(sys.path)
    model, mv = registry.load_pyfunc_model(name, "2")
    assert str(mv.version) == "2" and list(scratch.iterdir()) == [] and sys.path == path_before
    sample = model.predict(pd.DataFrame({"n": [4], "seed": [7]}))
    assert sample["x"].tolist() == pytest.approx(expected_sample(4, 7, -1.0))

    # a fresh interpreter that knows only the tracking URI
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["MLFLOW_TRACKING_URI"] = registry.tracking_uri
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, MlflowRegistry.model_uri(name, "champion")],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["x"] == pytest.approx(expected_sample(4, 7, 2.0))  # champion = v1, scale 2
    assert result["project_modules"] == []
    assert Path(result["sampler_file"]).resolve() != src.resolve()  # shipped via code_paths
    assert sorted(p.name for p in elsewhere.iterdir()) == []
    assert_cwd_clean(cwd)


def test_materialize_asset_logs_run_tagged_with_dagster_run_id(store):
    registry, _, cwd = store

    @dg.asset(code_version="v7")
    def tiny_trained(context: dg.AssetExecutionContext, mlflow: MlflowRegistry):
        tags = mlflow.lineage_tags(
            dagster_run_id=context.run.run_id, asset_key=context.asset_key,
            code_version=context.assets_def.code_versions_by_key[context.asset_key],
            data_version="manifest-xyz", config_hash="cfg",
        )
        with mlflow.start_run("dagster-family", run_name=context.run.run_id[:8], tags=tags) as run:
            mlflow.client().log_metric(run.info.run_id, "loss", 0.5)
        return dg.MaterializeResult(metadata={"mlflow_run_id": run.info.run_id})

    result = dg.materialize(
        [tiny_trained], resources={"mlflow": MlflowRegistry(tracking_uri=registry.tracking_uri)}
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("tiny_trained")
    run = registry.client().get_run(materialization.metadata["mlflow_run_id"].value)
    assert run.data.tags["dagster_run_id"] == result.run_id
    assert run.data.tags["dagster_asset_key"] == "tiny_trained"
    assert run.data.tags["code_version"] == "v7"
    assert run.info.status == "FINISHED"
    assert_cwd_clean(cwd)


def _initialize_after(barrier, uri: str) -> None:
    barrier.wait(timeout=60)
    MlflowRegistry(tracking_uri=uri).initialize()


def test_concurrent_initialize_on_a_fresh_database(tmp_path):
    """Two processes initialising one new SQLite file at once: the lock serialises the
    migrations (without it, here, one or both die in Alembic with "table already exists").
    Forked, so the children skip importing mlflow and dagster again."""
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_initialize_after, args=(barrier, uri)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    registry = MlflowRegistry(tracking_uri=uri)
    assert registry.client().get_experiment("0").name == "Default"
