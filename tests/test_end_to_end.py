"""The whole pipeline through the clients its users have: `atelier ui` (the Dagster webserver
and daemon, and the MLflow server) in a subprocess on free loopback ports, jobs launched and
polled through Dagster's GraphQL client, champions looked up and sampled through MLflow in a
separate process, and the gallery site opened in headless Chromium.

Small real corpora and tiny training configs keep it to a few minutes."""
from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from corpora.ingest import load_manifest, shard_paths
from corpora.shards import read_shards
from models.family import families
from models.painting_gan.config import PaintingGanConfig
from tests.browser import media_report, screenshot
from tests.test_midi_video_assets import write_chorale
from tests.tiny_corpora import write_all

PROJECT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("ATELIER_TEST_ARTIFACTS", PROJECT / "test-artifacts"))
START_TIMEOUT_S, RUN_TIMEOUT_S, STOP_TIMEOUT_S = 240, 1200, 60
TERMINAL = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
RECORDS = families()
FAMILIES = tuple(RECORDS)
TRAINING_STEPS = tuple(record.key for record in RECORDS.values())
TINY_TRAINING = {name: config for record in RECORDS.values()
                 for name, config in importlib.import_module(f"{record.package}.testing").TINY_RUN_CONFIG.items()}
COVER_TAG = {"image": "img", "midi": "audio", "video": "video"}  # what the site shows of each kind of sample
TINY_INGEST = {"image_corpus": {"heldout_percent": 30}, "painting_corpus": {"heldout_percent": 0},
               "midi_corpus": {"heldout_percent": 40}, "video_corpus": {"heldout_percent": 50}}


def run_config(ops: dict) -> dict:
    return {"ops": {name: {"config": config} for name, config in ops.items()}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data, home = root / "data", root / "dagster_home"
    write_all(data / "raw")
    ports = {"dagster": free_port(), "mlflow": free_port(), "gallery": free_port()}
    env = {**os.environ, "ATELIER_DATA_ROOT": str(data), "DAGSTER_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(root / "atelier-ui.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "atelier"), "ui", "--port", str(ports["dagster"]),
         "--mlflow-port", str(ports["mlflow"]), "--gallery-port", str(ports["gallery"])],
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
    )
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (answers(urls["dagster"] + "/server_info") and answers(urls["mlflow"] + "/health")
               and answers(urls["gallery"] + "/rate")):
        assert server.poll() is None, (root / "atelier-ui.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the UIs did not come up in time"
        time.sleep(2)
    from dagster_graphql import DagsterGraphQLClient

    yield {"root": root, "data": data, "home": home, "ports": ports, "urls": urls, "server": server,
           "client": DagsterGraphQLClient("127.0.0.1", port_number=ports["dagster"]), "log": root / "atelier-ui.log"}
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=STOP_TIMEOUT_S)
    log.close()


def wait_for(client, run_ids: list[str]) -> dict[str, dg.DagsterRunStatus]:
    deadline, statuses = time.monotonic() + RUN_TIMEOUT_S, {}
    while time.monotonic() < deadline:
        statuses = {run_id: client.get_run_status(run_id) for run_id in run_ids}
        if all(status in TERMINAL for status in statuses.values()):
            return statuses
        time.sleep(1)
    raise AssertionError(f"runs did not finish in {RUN_TIMEOUT_S} s: {statuses}")


@pytest.fixture(scope="module")
def main_run(stack):
    run_id = stack["client"].submit_job_execution("main", run_config=run_config({**TINY_INGEST, **TINY_TRAINING}))
    assert wait_for(stack["client"], [run_id]) == {run_id: dg.DagsterRunStatus.SUCCESS}, stack["log"].read_text()[-4000:]
    return run_id


def test_every_family_champion_samples_through_the_mlflow_server_in_a_clean_process(stack, main_run, tmp_path):
    script = r"""
import json, sys, numpy as np, mlflow
from mlflow import MlflowClient
client = MlflowClient()
out = {}
for name in sys.argv[1].split(","):
    version = client.get_model_version_by_alias(name, "champion")
    result = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict({"n": 2, "seed": 0})
    out[name] = {"version": version.version, "dagster_run": version.tags["dagster_run_id"], "items": len(result),
                 "shape": list(result.shape) if hasattr(result, "shape") else None,
                 "smallest_bytes": min(len(r) for r in result) if isinstance(result, list) else None}
out["dagster_loaded"] = "dagster" in sys.modules
print(json.dumps(out))
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": stack["urls"]["mlflow"], "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", script, ",".join(FAMILIES)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dagster_loaded"] is False
    for name, record in RECORDS.items():
        assert result[name]["items"] == 2 and result[name]["dagster_run"] == main_run
        if record.samples == "midi":
            assert result[name]["smallest_bytes"] > 20  # MIDI files with notes in them
        else:
            assert len(result[name]["shape"]) == (4 if record.samples == "image" else 5)  # (n, H, W, C) or (n, T, H, W, C)
    assert result["image-gan"]["shape"] == [2, 32, 32, 1]  # the tiny corpus' resolution, the grey default
    side = PaintingGanConfig.profile("demo").resolution  # the painting asset's default profile
    assert result["painting-gan"]["shape"] == [2, side, side, 3]


def test_gallery_site_loads_every_image_audio_and_video_in_chromium(stack, main_run, tmp_path):
    galleries = stack["data"] / "galleries"
    site = galleries / "index.html"
    pages = [site, *sorted(galleries.glob("*/*/index.html"))]
    assert len(pages) == 1 + len(FAMILIES)
    report = media_report(pages, tmp_path)
    broken = [item for item in report if not item["ok"]]
    assert not broken, broken
    kinds = {(Path(item["page"]).parent.parent.name, item["tag"]) for item in report}
    assert {(name, COVER_TAG[record.samples]) for name, record in RECORDS.items()} <= kinds
    assert sum(item["tag"] == "video" and item["page"].endswith("/galleries/index.html") for item in report) >= 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = screenshot(site, ARTIFACTS / "gallery-site.png")
    assert shot.stat().st_size > 10_000


def step_windows(instance: dg.DagsterInstance, run_ids: list[str]) -> list[tuple[float, float, str]]:
    windows = []
    for run_id in run_ids:
        for stats in instance.get_run_step_stats(run_id):
            if stats.step_key in TRAINING_STEPS and stats.start_time and stats.end_time:
                windows.append((stats.start_time, stats.end_time, f"{run_id[:8]}:{stats.step_key}"))
    return sorted(windows)


def test_overlapping_ingest_and_trainings_share_the_queue_without_corrupting_anything(stack, main_run):
    client = stack["client"]
    for index in range(2):  # new input, so the ingest really writes while training reads
        write_chorale(stack["data"] / "raw" / "midi" / f"late-{index}.mid", shift=3 + index)
    # every family warm-starts from its champion; the galleries downstream are left out, as the main run built them
    retrain = run_config({name: {**TINY_TRAINING[name], "start_from": "champion"} for name in TRAINING_STEPS})
    run_ids = [
        client.submit_job_execution("ingest", run_config=run_config(TINY_INGEST)),
        client.submit_job_execution("retrain", run_config=retrain, asset_selection=list(TRAINING_STEPS)),
        client.submit_job_execution("retrain", run_config=run_config(
            {"music_vae": {**TINY_TRAINING["music_vae"], "start_from": "champion"}}), asset_selection=["music_vae"]),
    ]
    statuses = wait_for(client, run_ids)
    assert set(statuses.values()) == {dg.DagsterRunStatus.SUCCESS}, stack["log"].read_text()[-4000:]

    with dg.DagsterInstance.from_config(str(stack["home"])) as instance:
        windows = step_windows(instance, run_ids)
    assert sum(name.endswith(":music_vae") for *_, name in windows) == 2
    for (_, end, first), (start, _, second) in zip(windows, windows[1:]):
        assert end <= start + 1.0, f"{first} and {second} trained at the same time (the gpu pool allows one)"

    for corpus in ("images", "painting", "midi", "video"):
        manifest_path = stack["data"] / "shards" / corpus / "manifest.json"
        manifest = load_manifest(manifest_path)
        for table, info in manifest["tables"].items():
            assert len(read_shards(shard_paths(manifest_path, table))) == info["rows"]
    assert load_manifest(stack["data"] / "shards" / "midi" / "manifest.json")["counts"]["ingested"] == 12

    from mlflow import MlflowClient

    registry = MlflowClient(tracking_uri=stack["urls"]["mlflow"])
    for name in FAMILIES:
        versions = registry.search_model_versions(f"name='{name}'")
        numbers = sorted(int(v.version) for v in versions)
        assert numbers == list(range(1, len(numbers) + 1))
        aliases = registry.get_registered_model(name).aliases
        assert {"champion", "challenger"} <= set(aliases) and set(aliases.values()) <= {str(n) for n in numbers}
    assert len(registry.search_model_versions("name='music-vae'")) >= 2  # the warm starts registered


def test_ctrl_c_stops_all_three_servers(stack, main_run):
    server = stack["server"]
    server.send_signal(signal.SIGINT)
    server.wait(timeout=STOP_TIMEOUT_S)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while any(listening(port) for port in stack["ports"].values()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not any(listening(port) for port in stack["ports"].values())
