"""Operating the pipeline: the raw-files sensor, the retraining schedule, unsynced assets,
warm starts, lineage links both ways, and the gallery site; real Dagster and MLflow."""
from __future__ import annotations

import os
import re
from pathlib import Path

import dagster as dg
import pytest
import torch
from dagster._core.definitions.data_version import StaleStatus
from dagster._core.definitions.observe import observe
from dagster._utils.test.data_versions import get_stale_status_resolver

from assets.gallery_site import gallery_site
from assets.ingest import CORPUS_ASSET_OF, RAW_FOLDERS
from assets.music_vae import music_gallery, music_vae
from corpora.scanning import folder_fingerprint
from pipelines.automation import raw_files_sensor, retraining_schedule
from pipelines.freshness import assets_to_refresh
from pipelines.definitions import TRAINING_ASSETS, build_resources, defs, retrain_job
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource
from tests.test_midi_video_assets import write_chorale
from tests.test_music_assets import write_chorales

midi_corpus = CORPUS_ASSET_OF["midi"]

MLFLOW_UI, DAGSTER_UI = "http://127.0.0.1:5999", "http://127.0.0.1:3999"
TINY_MUSIC = {"kinds": ["melody"], "steps": 3, "eval_samples": 4}


# --- the raw-files sensor ----------------------------------------------------------------------


def write_png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)


def test_raw_files_sensor_requests_ingest_only_for_content_changes(tmp_path):
    storage = StorageResource(data_root=str(tmp_path))
    (tmp_path / "raw" / "midi").mkdir(parents=True)
    for index in range(2):
        write_chorale(tmp_path / "raw" / "midi" / f"piece-{index}.mid", shift=index)
        write_png(tmp_path / "raw" / "images" / "shirts" / f"{index}.png", 40 * index)
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor: str | None) -> dg.SensorResult:
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"storage": storage})
        result = raw_files_sensor(context)
        for event in result.asset_events:  # what the daemon does with a sensor's observations
            instance.report_runless_asset_event(event)
        return result

    def requested(result: dg.SensorResult) -> list[str]:
        return sorted(key.to_user_string() for request in result.run_requests for key in request.asset_selection)

    first = tick(None)  # nothing observed yet: every folder, even an empty one, gets ingested
    assert requested(first) == ["image_corpus", "midi_corpus", "painting_corpus", "video_corpus"]
    assert tick(first.cursor).run_requests == []
    assert tick(None).run_requests == []  # a lost cursor falls back to the recorded observations

    piece = tmp_path / "raw" / "midi" / "piece-0.mid"
    stat = piece.stat()
    os.utime(piece, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    touched = tick(first.cursor)
    assert touched.run_requests == [] and touched.cursor != first.cursor

    write_chorale(piece, shift=7)
    changed = tick(touched.cursor)
    assert requested(changed) == ["midi_corpus"]
    [observation] = changed.asset_events
    assert observation.asset_key == RAW_FOLDERS["midi"].key
    assert observation.tags["dagster/data_version"] == folder_fingerprint(tmp_path / "raw" / "midi")
    assert changed.run_requests[0].run_key.startswith("midi-")
    assert tick(changed.cursor).run_requests == []


# --- the schedule ------------------------------------------------------------------------------


def test_nightly_retraining_continues_from_champions_by_default_and_is_configurable():
    schedule = defs.get_schedule_def("nightly_retraining")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    [request] = schedule.evaluate_tick(dg.build_schedule_context()).run_requests
    ops = request.run_config["ops"]
    assert {name: op["config"]["start_from"] for name, op in ops.items()} == {
        asset.op.name: "champion" for asset in TRAINING_ASSETS}
    job = defs.resolve_job_def("retrain")
    assert dg.validate_run_config(job, request.run_config)
    retrained = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert {"image_gan", "music_vae", "image_gallery", "music_gallery", "gallery_site"} <= retrained
    assert not any(name.endswith("_corpus") for name in retrained)

    fresh = retraining_schedule(TRAINING_ASSETS, retrain_job, cron="30 1 * * 6", start_from="fresh")
    assert fresh.cron_schedule == "30 1 * * 6"
    [fresh_request] = fresh.evaluate_tick(dg.build_schedule_context()).run_requests
    assert all(op["config"]["start_from"] == "fresh" for op in fresh_request.run_config["ops"].values())
    with pytest.raises(ValueError, match="start_from|ATELIER_RETRAIN_START_FROM"):
        retraining_schedule(TRAINING_ASSETS, retrain_job, start_from="yesterday")


# --- one real music family: unsynced status, warm starts, links, the site -------------------------


@pytest.fixture(scope="module")
def music_instance(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops")
    write_chorales(root / "data" / "raw" / "midi")
    resources = build_resources(str(root / "data"))
    store = resources["mlflow"]
    resources["mlflow"] = MlflowRegistry(tracking_uri=store.tracking_uri, artifact_root=store.artifact_root,
                                         ui_url=MLFLOW_UI, dagster_ui_url=DAGSTER_UI)
    resources["mlflow"].initialize()
    instance = dg.DagsterInstance.ephemeral()
    observe([RAW_FOLDERS["midi"]], resources=resources, instance=instance)
    result = dg.materialize(
        [RAW_FOLDERS["midi"], midi_corpus, music_vae, music_gallery, gallery_site], resources=resources,
        instance=instance, run_config={"ops": {"midi_corpus": {"config": {"heldout_percent": 40}},
                                               "music_vae": {"config": TINY_MUSIC}}},
    )
    assert result.success
    return {"root": root / "data", "resources": resources, "instance": instance, "result": result}


def metadata_of(result, asset) -> dict:
    [event] = result.asset_materializations_for_node(asset.op.name)
    return {k: v.value for k, v in event.metadata.items()}


def test_metadata_links_mlflow_and_the_model_version_links_back(music_instance):
    trained = metadata_of(music_instance["result"], music_vae)
    registry = music_instance["resources"]["mlflow"]
    run = registry.client().get_run(trained["mlflow_run_id"])
    assert trained["mlflow_run"] == f"{MLFLOW_UI}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert trained["mlflow_model_version"] == f"{MLFLOW_UI}/#/models/music-vae/versions/1"
    assert trained["corpus_data_version"] == metadata_of(music_instance["result"], midi_corpus)["data_version"]
    version = registry.client().get_model_version("music-vae", "1")
    dagster_run = music_instance["result"].run_id
    assert version.tags["dagster_run_url"] == f"{DAGSTER_UI}/runs/{dagster_run}"
    assert dagster_run in version.description and "music_vae" in version.description


def test_gallery_site_links_the_champion_and_every_file_it_names_exists(music_instance):
    site = Path(metadata_of(music_instance["result"], gallery_site)["index"])
    assert site == music_instance["root"] / "galleries" / "index.html"
    page = site.read_text()
    assert "Champion: version 1" in page and 'href="music-vae/1/index.html"' in page
    assert "No version registered yet." in page  # the families this test did not train
    targets = re.findall(r'(?:src|href)="([^"]+)"', page)
    local = [t for t in targets if not t.startswith(("http", "#"))]  # "#...": a picture's larger view on the page
    assert any(t.endswith(".wav") for t in local) and any(t.endswith(".png") for t in local)
    for target in local:
        assert (site.parent / target.split("?")[0]).is_file(), target  # "rate.html?family=...": one page for all
    views = {t.removeprefix("#") for t in targets if t.startswith("#")} - {"_"}  # "#_" closes a larger view
    assert views and all(f'id="{view}"' in page for view in views)


def test_retraining_reuses_identical_weights_and_warm_starts_from_the_champion(music_instance):
    resources, instance = music_instance["resources"], music_instance["instance"]
    registry = resources["mlflow"]

    def train(start_from: str) -> dict:
        result = dg.materialize([music_vae], resources=resources, instance=instance, selection=[music_vae],
                                run_config={"ops": {"music_vae": {"config": {**TINY_MUSIC, "start_from": start_from}}}})
        assert result.success
        return metadata_of(result, music_vae)

    again = train("fresh")  # same data, code, config and seed: the same weights
    assert again["model_version"] == "1" and again["start_from"] == "fresh"
    assert len(registry.client().search_model_versions("name='music-vae'")) == 1

    warm = train("champion")
    assert warm["model_version"] == "2" and warm["start_from"] == "champion version 1"
    first, second = (registry.load_pyfunc_model("music-vae", v)[0].unwrap_python_model().models["melody"]
                     for v in ("1", "2"))
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert str(registry.get_version_by_alias("music-vae", "challenger").version) == "2"


def test_a_changed_corpus_file_or_code_version_makes_downstream_assets_unsynced(music_instance):
    instance, resources = music_instance["instance"], music_instance["resources"]
    assets = [RAW_FOLDERS["midi"], midi_corpus, music_vae, music_gallery]

    def status(asset_list, asset) -> StaleStatus:
        return get_stale_status_resolver(instance, asset_list).get_status(asset.key)

    def to_refresh(asset_list) -> list[str]:
        """What `atelier run` would recompute below the corpora (pipelines/freshness.py)."""
        graph = dg.Definitions(assets=asset_list, resources=resources).resolve_asset_graph()
        return [key.to_user_string() for key in assets_to_refresh(instance, graph, [music_vae.key, music_gallery.key])]

    # music_vae was re-materialized by the previous test; bring the gallery up to date too.
    assert dg.materialize([music_vae, music_gallery], resources=resources, instance=instance,
                          selection=[music_gallery]).success
    assert [status(assets, a) for a in (midi_corpus, music_vae, music_gallery)] == [StaleStatus.FRESH] * 3
    assert to_refresh(assets) == []  # a rerun now trains nothing

    @dg.asset(name="music_vae", deps=[midi_corpus], code_version="music-vae-next")
    def music_vae_with_new_code():
        ...

    changed_code = [RAW_FOLDERS["midi"], midi_corpus, music_vae_with_new_code, music_gallery]
    assert status(changed_code, music_vae_with_new_code) == StaleStatus.STALE
    causes = get_stale_status_resolver(instance, changed_code).get_stale_causes(music_vae_with_new_code.key)
    assert any("code version" in cause.reason for cause in causes)
    assert status(changed_code, midi_corpus) == StaleStatus.FRESH
    assert to_refresh(changed_code) == ["music_vae", "music_gallery"]

    # Dagster marks an asset unsynced when a direct input has a new data version, so a change
    # walks down the graph one materialization at a time.
    piece = sorted((music_instance["root"] / "raw" / "midi").glob("*.mid"))[0]
    write_chorale(piece, shift=5)
    observe([RAW_FOLDERS["midi"]], resources=resources, instance=instance)
    assert status(assets, midi_corpus) == StaleStatus.STALE
    assert dg.materialize([midi_corpus], resources=resources, instance=instance, selection=[midi_corpus],
                          run_config={"ops": {"midi_corpus": {"config": {"heldout_percent": 40}}}}).success
    assert [status(assets, a) for a in (midi_corpus, music_vae)] == [StaleStatus.FRESH, StaleStatus.STALE]
    causes = get_stale_status_resolver(instance, assets).get_stale_causes(music_vae.key)
    assert [cause.reason for cause in causes] == ["has a new dependency data version"]
    assert to_refresh(assets) == ["music_vae", "music_gallery"]  # the gallery too: its input is about to change
