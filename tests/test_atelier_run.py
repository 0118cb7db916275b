"""`atelier run --config FILE`, as a user whose MIDI folder holds a broken file runs it: the MIDI
corpus fails its reject-rate gate, which stops only the music family; every other family trains,
the site is built and names the family that did not, the output says why in one line with no
stack trace and no library warnings, and the exit status reports the failure."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

from models.family import families
from tests.tiny_corpora import write_all

PROJECT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 1800
TINY_INGEST = {"image_corpus": {"heldout_percent": 30}, "painting_corpus": {"heldout_percent": 0},
               "midi_corpus": {"heldout_percent": 40, "max_reject_rate": 0.0},
               "video_corpus": {"heldout_percent": 50}}


def tiny_run_config() -> dict:
    ops = dict(TINY_INGEST)
    for record in families().values():
        ops.update(importlib.import_module(f"{record.package}.testing").TINY_RUN_CONFIG)
    return {"ops": {name: {"config": config} for name, config in ops.items()}}


def test_a_failed_corpus_gate_stops_only_its_families_and_the_site_says_so(tmp_path):
    data = tmp_path / "data"
    write_all(data / "raw")
    (data / "raw" / "midi" / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06 not a MIDI file")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config()))
    env = {**os.environ, "ATELIER_DATA_ROOT": str(data), "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "ATELIER_TRAINER_MODE": "in_process"}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--config", str(config)], cwd=PROJECT,
                         env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    output = out.stdout + out.stderr
    assert out.returncode == 1, output[-4000:]

    music = next(record for record in families().values() if record.corpus == "midi")
    [failure] = [line for line in out.stdout.splitlines() if line.startswith(f"FAILED {music.name}:")]
    assert "midi_corpus" in failure and "reject_rate" in failure and "ops.midi_corpus.config.max_reject_rate" in failure
    assert "0.0%" in failure  # the threshold the config set
    assert "Traceback" not in output and "BetaWarning" not in output and "Add type hints" not in output

    site = (data / "galleries" / "index.html").read_text()
    assert "Not updated by the last run: its corpus midi_corpus failed" in site
    for record in families().values():
        if record is music:
            assert not (data / "galleries" / record.name).exists()
        else:
            assert list((data / "galleries" / record.name).glob("*/index.html")), f"{record.name} has no gallery"
            assert f"{record.name}/1/index.html" in site
