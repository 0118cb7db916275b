"""Two processes register the same model name into one SQLite MLflow store at the same moment:
both versions exist, distinct, each with its own run, model and artifacts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from resources.mlflow_registry import MlflowRegistry

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "concurrent-constant"
WRITERS = 2


def test_two_concurrent_registrations_of_one_name_get_distinct_versions(tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    sync, cwd = tmp_path / "sync", tmp_path / "cwd"
    sync.mkdir()
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env.update(PYTHONPATH=str(PROJECT_ROOT), MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    logs = [tmp_path / f"writer-{i}.log" for i in range(WRITERS)]
    processes = []
    for index, log in enumerate(logs):
        with open(log, "wb") as sink:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "tests.reliability._register_child", uri, str(index), str(sync), MODEL_NAME],
                cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=sink,
            ))
    try:
        registry = MlflowRegistry(tracking_uri=uri)
        registry.initialize()  # migrations once, before the fan-out (as the pipeline does), while they import
        (sync / "initialized").touch()
        deadline = time.monotonic() + 180
        while len(list(sync.glob("ready-*"))) < WRITERS:  # both runs exist: now release them together
            assert all(p.poll() is None for p in processes), [log.read_text()[-3000:] for log in logs]
            assert time.monotonic() < deadline, "the writers never got ready"
            time.sleep(0.01)
        (sync / "go").touch()
        outputs = [p.communicate(timeout=240)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(processes, logs):
        assert p.returncode == 0, log.read_text()[-4000:]
    results = [json.loads(out.decode().strip().splitlines()[-1]) for out in outputs]

    versions = [r["version"] for r in results]
    assert len(set(versions)) == WRITERS and sorted(versions, key=int) == [str(v) for v in range(1, WRITERS + 1)]
    assert len({r["run_id"] for r in results}) == WRITERS
    assert len({r["model_id"] for r in results}) == WRITERS

    client = registry.client()
    registered = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert sorted(str(mv.version) for mv in registered) == sorted(versions)
    for result in results:
        mv = client.get_model_version(MODEL_NAME, result["version"])
        assert mv.status == "READY"
        assert mv.run_id == result["run_id"]  # each version carries its own writer's run
        assert mv.source == f"models:/{result['model_id']}"
        run = client.get_run(result["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["writer"] == str(result["index"])
        assert [o.model_id for o in run.outputs.model_outputs] == [result["model_id"]]
        # the artifacts are that writer's own: the loaded model answers with its index
        model, loaded = registry.load_pyfunc_model(MODEL_NAME, result["version"], dst_dir=str(tmp_path / f"dl-{mv.version}"))
        assert loaded.run_id == result["run_id"]
        assert model.predict(pd.DataFrame({"x": [0, 1]}))["value"].tolist() == [result["index"]] * 2

    assert sorted(p.name for p in cwd.iterdir()) == []  # no ./mlruns or ./mlflow.db from MLflow defaults
