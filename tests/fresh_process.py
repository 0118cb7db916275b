"""Code for a fresh Python process that must load a registered model without this project."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

FORBID_PROJECT_IMPORTS = '''
import importlib.abc, io, json, sys

class Forbid(importlib.abc.MetaPathFinder):
    # the registered model may use only models/ (from its code path) and what MLflow installs
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("corpora", "dagster", "assets", "pipelines", "resources"):
            raise ImportError(f"the pyfunc imported {name}")
        return None

sys.meta_path.insert(0, Forbid())
'''


def run_in_fresh_process(script: str, model_dir: Path, *args: str, timeout: float = 120, **env: str) -> dict:
    """Run `script` after FORBID_PROJECT_IMPORTS in a new interpreter whose only path into this project
    is the saved model's code, with `model_dir` and `args` as sys.argv[1:]; return the JSON object it
    printed last. `env` adds environment variables."""
    cwd = Path(model_dir).parent / "fresh-cwd"  # empty, so the project is not importable from the working directory
    cwd.mkdir()
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment.update(PYTHONPATH=str(Path(model_dir) / "code"), MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", **env)
    out = subprocess.run([sys.executable, "-c", FORBID_PROJECT_IMPORTS + textwrap.dedent(script), str(model_dir), *args],
                         cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
