"""The code location loads, validates with Dagster's own CLI, and its asset graph is pinned.

The snapshot catches an unintended lineage change (a renamed asset, a lost dependency, a
dropped check). After an intended change, refresh it with
`ATELIER_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_definitions.py`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets.corpus_assets import IngestConfig
from assets.ingest import CORPORA, MidiIngestConfig
from pipelines.definitions import defs, forkserver_unless_chosen

PROJECT = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def asset_graph() -> dict:
    graph = {}
    repository = defs.get_repository_def()
    asset_graph = repository.asset_graph
    for key in sorted(asset_graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = asset_graph.get(key)
        graph[key.to_user_string()] = {
            "group": node.group_name,
            "code_version": node.code_version,
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "checks": sorted(
                f"{spec.name}{' (blocking)' if spec.blocking else ''}"
                for spec in map(asset_graph.get_check_spec, asset_graph.get_check_keys_for_assets([key]))
            ),
            "kinds": sorted(node.kinds),
        }
    graph["__jobs__"] = sorted(job.name for job in repository.get_all_jobs() if not job.name.startswith("__"))
    return graph


def test_asset_graph_matches_snapshot():
    current = asset_graph()
    if os.environ.get("ATELIER_UPDATE_SNAPSHOTS") or not SNAPSHOT.exists():
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text())


def test_definitions_load_and_resolve_jobs():
    dg.Definitions.validate_loadable(defs)
    main = defs.resolve_job_def("main")
    assert {key.to_user_string() for key in main.asset_layer.executable_asset_keys} >= {
        "image_corpus", "painting_corpus", "midi_corpus", "video_corpus"
    }


def test_each_corpus_option_reaches_its_corpus_config():
    """A corpus's own launchpad options are fields of its corpus config (a misspelt one would be
    dropped), and their values arrive there."""
    shared = set(IngestConfig.model_fields)
    for corpus in CORPORA:
        own = set(corpus.config_type.model_fields) - shared
        assert own, corpus.name
        assert own <= {field.name for field in dataclasses.fields(corpus.config_type.CORPUS_CONFIG)}, corpus.name
        config = corpus.config_type()
        assert all(getattr(config.corpus_config(), name) == getattr(config, name) for name in own), corpus.name
    # music in 4/2 at a half-note tactus: four steps a half note, eight quarters a bar
    assert MidiIngestConfig(steps_per_quarter=2, quarters_per_bar=8).corpus_config().bar_steps == 16


def test_steps_fork_from_a_preloaded_server_unless_the_run_config_chooses():
    chosen = {"multiprocess": {"max_concurrent": 2, "start_method": {"spawn": {}}}}
    assert forkserver_unless_chosen(chosen) == chosen
    assert forkserver_unless_chosen({"in_process": {}}) == {"in_process": {}}
    assert forkserver_unless_chosen({"multiprocess": {"max_concurrent": 2}}) == {
        "multiprocess": {"max_concurrent": 2, "start_method": {"forkserver": {}}}}
    main = defs.resolve_job_def("main")
    for execution in ({}, {"in_process": {}}, chosen):  # the launchpad's choices still validate
        assert dg.validate_run_config(main, {"execution": {"config": execution}} if execution else {})


def test_dagster_cli_validates_the_workspace(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "ATELIER_DATA_ROOT": str(tmp_path / "data")}
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Validation successful" in completed.stdout + completed.stderr


def test_mlflow_tracking_uri_in_the_environment_points_every_run_at_that_server(monkeypatch, tmp_path):
    from pipelines.definitions import build_resources

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = build_resources(str(tmp_path))["mlflow"]
    assert local.tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert local.artifact_root == str(tmp_path / "mlflow" / "artifacts")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    server = build_resources(str(tmp_path))["mlflow"]
    assert (server.tracking_uri, server.artifact_root, server.ui_base()) == (
        "http://mlflow.internal:5000", "", "http://mlflow.internal:5000")


def test_registered_models_pin_what_pyproject_pins():
    """A registered model's pip requirements come from the installed versions, never typed into
    asset code: each must satisfy pyproject.toml, and the exact pins must be the same pins."""
    import tomllib

    from packaging.requirements import Requirement

    from models.family import families

    declared = {Requirement(text).name.lower(): Requirement(text)
                for text in tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for record in families().values():
        for pinned in map(Requirement, record.pip_requirements()):
            [version] = [spec.version for spec in pinned.specifier]
            wanted = declared[pinned.name.lower().replace("_", "-")] if pinned.name.lower().replace("_", "-") in declared \
                else declared[pinned.name.lower()]
            assert wanted.specifier.contains(version), f"{record.name}: {pinned} does not satisfy pyproject's {wanted}"
            exact = [spec.version for spec in wanted.specifier if spec.operator == "=="]
            assert not exact or exact == [version], f"{record.name}: {pinned} differs from pyproject's pin {wanted}"
    assert {"torch==2.13.0", "mlflow==3.17.2"} <= set(families()["image-gan"].pip_requirements())


def test_no_module_lists_the_families_by_hand():
    """Outside its own package and assets module, no code names two families: whatever needs
    every family iterates the records, so a fifth family needs no edit outside its own files
    (an example in a help text may name one; the README and docs may name them all)."""
    from models.family import families

    records = list(families().values())
    code = [path for folder in ("models", "assets", "pipelines", "resources", "corpora", "common", "bench")
            for path in (PROJECT / folder).rglob("*.py")]
    for path in code:
        text = path.read_text()
        named = [record.name for record in records
                 if record.name in text and path not in (PROJECT / "assets" / f"{record.key}.py",)
                 and PROJECT / "models" / record.key not in path.parents]
        assert len(named) <= 1, f"{path.relative_to(PROJECT)} names the families {named}"


def test_a_training_run_config_puts_its_overrides_on_the_profile_and_names_the_profiles_it_knows():
    from assets.training import TrainingRunConfig
    from models.video_rnn.config import VideoRnnConfig

    overridden = TrainingRunConfig(steps=7, batch_size=3).family_config(VideoRnnConfig, seed=5).to_dict()
    demo = VideoRnnConfig.profile("demo").to_dict()
    assert (overridden["steps"], overridden["batch_size"], overridden["seed"]) == (7, 3, 5)
    assert {k: v for k, v in overridden.items() if k not in ("steps", "batch_size", "seed")} == \
        {k: v for k, v in demo.items() if k not in ("steps", "batch_size", "seed")}
    assert TrainingRunConfig().family_config(VideoRnnConfig, seed=0).steps == demo["steps"]  # 0 keeps the profile's
    with pytest.raises(dg.Failure, match="cpu-long.*demo"):
        TrainingRunConfig(profile="no-such-profile").family_config(VideoRnnConfig, seed=0)
