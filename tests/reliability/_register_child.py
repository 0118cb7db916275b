"""`python -m tests.reliability._register_child URI INDEX SYNC_DIR MODEL_NAME`: one of the
processes that register a model version at the same time.

It imports everything, waits for `SYNC_DIR/initialized` (the test migrates the store
meanwhile), starts an MLflow run, signals `SYNC_DIR/ready-INDEX`, waits for `SYNC_DIR/go`
(created by the test once every process is ready), then logs and registers a
ConstantModel(INDEX) and prints {"index", "run_id", "version", "model_id"} as JSON.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def wait_for(path: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.001)


def main(argv: list[str]) -> None:
    uri, index, sync, name = argv[1], int(argv[2]), Path(argv[3]), argv[4]
    sys.path.insert(0, str(HERE))
    import atelier_reliability_pyfunc as pyfunc_module
    import mlflow

    from resources.mlflow_registry import MlflowRegistry

    wait_for(sync / "initialized")
    registry = MlflowRegistry(tracking_uri=uri)
    with registry.start_run("concurrent-registration", run_name=f"writer-{index}", tags={"writer": index}) as run:
        (sync / f"ready-{index}").touch()
        wait_for(sync / "go")
        info, version = registry.log_pyfunc_model(
            run.info.run_id, "constant", pyfunc_module.ConstantModel(index),
            registered_model_name=name, code_paths=[pyfunc_module.__file__],
            pip_requirements=[f"mlflow=={mlflow.__version__}", "pandas"],
        )
    print(json.dumps({"index": index, "run_id": run.info.run_id, "version": version, "model_id": info.model_id}),
          flush=True)
    sys.stderr.flush()
    # Everything is committed. Skip the interpreter's teardown of dagster/mlflow/pydantic
    # modules, which takes seconds here and tests nothing.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
