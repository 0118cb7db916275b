"""SIGKILL `atelier run` while a family trains: the next `atelier run` marks the orphaned run
failed, frees the `gpu` pool slot it held (without that it would wait for the slot forever),
trains what is missing and builds every gallery."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import yaml

from models.family import families
from tests.test_atelier_run import PROJECT, RUN_TIMEOUT_S, tiny_run_config
from tests.tiny_corpora import write_all

TRAINING_STEP = re.compile(r"^\S+ (\w+): step \d+", re.MULTILINE)
POLL_S = 0.2


def wait_for_training(process: subprocess.Popen, log: Path) -> str:
    """The first training asset that reports a step, once it has."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        found = TRAINING_STEP.search(log.read_text(errors="replace"))
        if found:
            return found.group(1)
        assert process.poll() is None, f"`atelier run` ended before any training step:\n{log.read_text()[-3000:]}"
        time.sleep(POLL_S)
    raise AssertionError(f"no training step within {RUN_TIMEOUT_S} s")


def test_a_killed_run_leaves_no_slot_claimed_and_the_next_run_finishes(tmp_path):
    data, home = tmp_path / "data", tmp_path / "dagster_home"
    write_all(data / "raw")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config()))
    env = {**os.environ, "ATELIER_DATA_ROOT": str(data), "DAGSTER_HOME": str(home),
           "ATELIER_TRAINER_MODE": "in_process"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "pipelines.cli", "run", "--config", str(config)]

    log = tmp_path / "killed.log"
    with open(log, "wb") as sink:
        first = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        training = wait_for_training(first, log)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()

    with dg.DagsterInstance.from_config(str(home)) as instance:
        [orphan] = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots, "the killed training held no slot"

    second = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    assert f"run {orphan.run_id[:8]} was left unfinished by a killed `atelier run`" in second.stdout
    assert training in second.stdout.split("out of date:", 1)[1].splitlines()[0]

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
    for record in families().values():
        assert list((data / "galleries" / record.name).glob("*/index.html")), f"{record.name} has no gallery"
