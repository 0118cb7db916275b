"""The training entry point (`python -m models.train`) by hand, and behind Dagster Pipes.

Real processes throughout: the MIDI corpus is ingested by a real Dagster materialize, the entry
point runs as a subprocess, and the asset launches it through PipesSubprocessClient.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets.ingest import CORPUS_ASSET_OF
from assets.music_vae import music_vae
from common.hashing import sha256_file
from models.music_vae import FAMILY
from models.music_vae.config import MusicVaeConfig
from models.music_vae.sampling import load_model
from models.train import OUTCOME_FILE, TrainingRequest
from pipelines.definitions import build_resources
from resources.trainer import TrainerLauncher, WholeLineMessageReader
from tests.test_music_assets import write_chorales

midi_corpus = CORPUS_ASSET_OF["midi"]

STEPS = 4
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def ingest_chorales(root: Path) -> dict:
    resources = build_resources(str(root / "data"))
    result = dg.materialize([midi_corpus], resources=resources, instance=dg.DagsterInstance.ephemeral(),
                            run_config={"ops": {"midi_corpus": {"config": {"source_dir": str(root.parent / "raw"),
                                                                           "heldout_percent": 40}}}})
    assert result.success
    return resources


@pytest.fixture(scope="module")
def chorales(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("entry")
    write_chorales(base / "raw")
    return base


def chorale_request() -> TrainingRequest:
    config = MusicVaeConfig.profile("demo", kind="chorale", steps=STEPS, seed=0)
    return TrainingRequest(family="music-vae", model_config={"chorale": config.to_dict()},
                           options={"eval_samples": 4}, device="cpu", threads=1)


def run_entry(request_path: Path, manifest: Path, run_dir: Path) -> list[dict]:
    completed = subprocess.run(
        [sys.executable, "-m", "models.train", "--config", str(request_path), "--manifest", str(manifest),
         "--run-dir", str(run_dir)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]


def test_entry_point_by_hand_reports_json_lines_and_resumes(chorales):
    resources = ingest_chorales(chorales / "by-hand")
    manifest = resources["storage"].shards_dir("midi") / "manifest.json"
    request_path = chorales / "request.json"
    request_path.write_text(chorale_request().to_json())
    run_dir = chorales / "run"

    lines = run_entry(request_path, manifest, run_dir)
    windows = [line for line in lines if "metrics" in line]
    [outcome] = [line["outcome"] for line in lines if "outcome" in line]
    assert [w["step"] for w in windows][-1] == STEPS and all("chorale.loss" in w["metrics"] for w in windows)
    assert outcome["step"] == STEPS and outcome["resumed_from"] == 0
    assert json.loads((run_dir / OUTCOME_FILE).read_text()) == outcome
    model = load_model(outcome["bundle"], "chorale")
    assert model.config.kind == "chorale" and outcome["score"] == outcome["summary"][FAMILY.rule.metric] > 0.0
    first_weights = sha256_file(outcome["bundle"])

    again = run_entry(request_path, manifest, run_dir)
    [rerun] = [line["outcome"] for line in again if "outcome" in line]
    assert rerun["resumed_from"] == STEPS and rerun["step"] == STEPS  # nothing left to train
    assert sha256_file(rerun["bundle"]) == first_weights


def test_a_bad_request_is_refused_before_training(tmp_path):
    path = tmp_path / "request.json"
    path.write_text(json.dumps({"family": "music-vae", "model_config": {}, "learning_rate": 1}))
    with pytest.raises(ValueError, match="learning_rate"):
        TrainingRequest.from_json(path.read_text())
    path.write_text(json.dumps({"family": "opera", "model_config": {}}))
    with pytest.raises(ValueError, match="family must be one of"):
        TrainingRequest.from_json(path.read_text())


def train_asset(root: Path, trainer: TrainerLauncher) -> tuple[dg.ExecuteInProcessResult, dict, list[str]]:
    """(result, resources, every log message of the run)."""
    resources = {**ingest_chorales(root), "trainer": trainer}
    resources["mlflow"].initialize()
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [music_vae], resources=resources, instance=instance,
        run_config={"ops": {"music_vae": {"config": {"kinds": ["chorale"], "steps": STEPS, "eval_samples": 4}}}},
    )
    assert result.success
    return result, resources, [entry.user_message for entry in instance.all_logs(result.run_id)]


def last_step_line(message: str) -> bool:
    """The metrics of step STEPS, as "step 4: ..." or with the run's progress, "step 4 of 4, about 0 s left: ..."."""
    return re.match(rf"step {STEPS}( of {STEPS}(,[^:]*)?)?: chorale\.loss=", message) is not None


def test_the_asset_trains_through_pipes_and_in_process_alike(chorales):
    piped, resources, piped_log = train_asset(chorales / "piped", TrainerLauncher())
    in_process, _, in_process_log = train_asset(chorales / "in-process", TrainerLauncher(mode="in_process"))

    assert any("external process successfully opened dagster pipes" in m for m in piped_log)
    assert any(last_step_line(m) for m in piped_log)  # the child's lines, in Dagster
    assert not any("dagster pipes" in m for m in in_process_log)
    assert any(last_step_line(m) for m in in_process_log)

    [piped_event] = piped.asset_materializations_for_node("music_vae")
    [in_process_event] = in_process.asset_materializations_for_node("music_vae")
    piped_bundle = piped_event.metadata["bundle"].value
    assert sha256_file(piped_bundle) == sha256_file(in_process_event.metadata["bundle"].value)
    assert Path(piped_bundle).parent.joinpath("request.json").exists()

    # every metric window the child reported is in the MLflow run, at its step
    client = resources["mlflow"].client()
    history = client.get_metric_history(piped_event.metadata["mlflow_run_id"].value, "chorale.loss")
    assert sorted(m.step for m in history)[-1] == STEPS and len(history) >= 2


def test_the_asset_trains_data_parallel_under_torchrun_through_pipes(chorales):
    """Two gloo ranks behind one Pipes session: rank 0 alone reports, so the asset gets one
    outcome; the bundle is a real, loadable model trained for the requested steps."""
    result, _, log = train_asset(chorales / "torchrun", TrainerLauncher(nproc_per_node=2))
    assert any(m == "rank 0 of 2, device cpu" for m in log)
    [event] = result.asset_materializations_for_node("music_vae")
    assert event.metadata["steps"].value == STEPS
    assert load_model(event.metadata["bundle"].value, "chorale").config.kind == "chorale"
    assert list(Path(event.metadata["bundle"].value).parent.joinpath("torchrun").iterdir())  # its logs, not in /tmp


def test_a_trainer_whose_launcher_dies_stops_and_leaves_a_checkpoint(chorales, tmp_path):
    """SIGKILL the process that started the trainer (a Dagster step, say): the orphan must not
    train on beside the rerun that will resume its folder."""
    import os
    import signal
    import time

    from models.trainer import latest_checkpoint

    resources = ingest_chorales(chorales / "orphan")
    manifest = resources["storage"].shards_dir("midi") / "manifest.json"
    request = chorale_request()
    long_run = 100_000
    request.model_config["chorale"]["steps"] = long_run
    request.trainer = {"log_every": 1}  # the first step's line, not the 100th's, says it trains
    request_path = tmp_path / "request.json"
    request_path.write_text(request.to_json())
    run_dir, child_out = tmp_path / "run", tmp_path / "trainer.out"
    launcher = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         f"child = subprocess.Popen([sys.executable, '-m', 'models.train', '--config', {str(request_path)!r}, "
         f"'--manifest', {str(manifest)!r}, '--run-dir', {str(run_dir)!r}], stdout=open({str(child_out)!r}, 'w'))\n"
         "print(child.pid, flush=True)\ntime.sleep(3600)\n"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
    )
    trainer_pid = int(launcher.stdout.readline())
    deadline = time.monotonic() + 300
    try:
        while '"metrics"' not in (child_out.read_text() if child_out.exists() else ""):
            assert time.monotonic() < deadline, "the trainer never logged a step"
            time.sleep(0.5)
    except AssertionError:
        os.kill(trainer_pid, signal.SIGKILL)  # a failed wait must not leave a 100,000-step trainer behind
        raise
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()

    deadline = time.monotonic() + 300
    while os.path.exists(f"/proc/{trainer_pid}") and "zombie" not in open(f"/proc/{trainer_pid}/status").read():
        assert time.monotonic() < deadline, "the orphaned trainer kept running"
        time.sleep(0.5)
    outcome = json.loads((run_dir / OUTCOME_FILE).read_text())
    assert 0 < outcome["step"] < long_run
    assert latest_checkpoint(run_dir / "chorale" / "checkpoints").name == f"step-{outcome['step']:06d}.pt"


HALF_WRITTEN_MESSAGE = """
import json, os, time
from dagster_pipes import (PIPES_PROTOCOL_VERSION, PIPES_PROTOCOL_VERSION_FIELD, PipesDefaultMessageWriter,
                           PipesEnvVarParamsLoader, open_dagster_pipes)
with open_dagster_pipes():
    path = PipesEnvVarParamsLoader().load_messages_params()[PipesDefaultMessageWriter.FILE_PATH_KEY]
    line = json.dumps({PIPES_PROTOCOL_VERSION_FIELD: PIPES_PROTOCOL_VERSION, "method": "report_custom_message",
                       "params": {"payload": {"outcome": "whole"}}}) + "\\n"
    with open(path, "a", encoding="utf-8") as messages:  # a line that crosses a page arrives in two parts
        messages.write(line[:40])
        messages.flush()
        time.sleep(0.5)
        messages.write(line[40:])
"""


def test_a_message_written_in_two_parts_reaches_the_asset_whole(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(HALF_WRITTEN_MESSAGE)

    @dg.asset(required_resource_keys={"pipes"})
    def half_written(context):
        invocation = context.resources.pipes.run(context=context, command=[sys.executable, str(script)])
        return dg.Output(list(invocation.get_custom_messages()))

    client = dg.PipesSubprocessClient(message_reader=WholeLineMessageReader())
    result = dg.materialize([half_written], resources={"pipes": client}, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert result.output_for_node("half_written") == [{"outcome": "whole"}]
