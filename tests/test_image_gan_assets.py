"""The image family end to end in Dagster: corpus -> classifier -> GAN in MLflow -> gallery."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from assets.image_gan import image_classifier, image_gallery, image_gan
from models.image_gan import CHAMPION_RULE
from assets.ingest import CORPUS_ASSET_OF
from pipelines.definitions import build_resources
from provenance.credentials import COMPOSITE, verify_file

image_corpus = CORPUS_ASSET_OF["images"]

HOSTILE_CLASS = '<img src=x onerror="alert(1)">'
CLASSES = ("bar", "blob", HOSTILE_CLASS)


def write_shapes(raw: Path, per_class: int = 40, size: int = 32) -> None:
    """Three easy classes: a horizontal bar, a bright blob, a vertical bar (plus noise)."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(CLASSES):
        folder = raw / name
        folder.mkdir(parents=True)
        for k in range(per_class):
            pixels = rng.integers(0, 40, (size, size), dtype=np.uint8)
            offset = rng.integers(4, size - 8)
            if index == 0:
                pixels[offset : offset + 4, 2:-2] = 230
            elif index == 1:
                pixels[offset : offset + 8, offset : offset + 8] = 255
            else:
                pixels[2:-2, offset : offset + 4] = 200
            Image.fromarray(pixels).save(folder / f"{k}.png")


@pytest.fixture(scope="module")
def family_run(tmp_path_factory):
    """Two trainings on one instance and one MLflow store: a decent one, then a worse one."""
    root = tmp_path_factory.mktemp("family")
    raw = root / "raw"
    write_shapes(raw)
    resources = build_resources(str(root / "data"))
    resources["mlflow"].initialize()
    instance = dg.DagsterInstance.ephemeral()

    def run(steps: int, selection=None):
        config = {"ops": {
            "image_corpus": {"config": {"source_dir": str(raw), "heldout_percent": 30}},
            "image_classifier": {"config": {"epochs": 40, "batch_size": 32}},
            "image_gan": {"config": {"steps": steps, "batch_size": 32}},
        }}
        if selection is not None:
            config["ops"] = {op: value for op, value in config["ops"].items() if op in selection}
        result = dg.materialize([image_corpus, image_classifier, image_gan, image_gallery], selection=selection,
                                resources=resources, run_config=config, instance=instance)
        assert result.success
        return result

    good = run(steps=120)
    # the GAN alone, judged with the first run's classifier on the same shards: a like-for-like comparison
    worse = run(steps=2, selection=["image_gan"])
    return {"root": root, "resources": resources, "good": good, "worse": worse}


def metadata_of(result, asset) -> dict:
    [event] = result.asset_materializations_for_node(asset.op.name)
    return {k: v.value for k, v in event.metadata.items()}


def test_training_registers_a_version_with_lineage(family_run):
    gan = metadata_of(family_run["good"], image_gan)
    classifier = metadata_of(family_run["good"], image_classifier)
    assert classifier["heldout_accuracy"] > 0.9  # three easy classes
    assert classifier["train_seconds"] > 0
    assert gan["model_version"] == "1" and gan["steps"] == 120
    assert gan["fid_classifier_floor"] < gan["fid_classifier"] < gan["fid_classifier_ceiling"]
    assert set(CHAMPION_RULE.metrics) <= set(gan)  # every number the champion rule reads is reported
    assert gan["label_accuracy_real"] == pytest.approx(classifier["heldout_accuracy"], abs=0.15)
    assert 0 <= gan["precision"] <= 1 and 0 <= gan["recall"] <= 1
    assert "label_accuracy" in gan["metrics_table"] and "classes" not in gan["metrics_table"]

    registry = family_run["resources"]["mlflow"]
    version = registry.client().get_model_version("image-gan", "1")
    run = registry.client().get_run(version.run_id)
    corpus = metadata_of(family_run["good"], image_corpus)
    assert run.data.tags["data_version"] == corpus["data_version"]
    assert run.data.tags["dagster_run_id"] == family_run["good"].run_id
    assert run.data.tags["dagster_asset_key"] == "image_gan"
    assert {"code_version", "git_commit", "config_hash"} <= set(run.data.tags)
    assert run.inputs.dataset_inputs[0].dataset.name == "image_corpus"
    assert "fid_classifier" in run.data.metrics and "d_loss" in run.data.metrics
    assert run.data.params["architecture"] == "dcgan"


def test_a_worse_model_becomes_challenger_but_not_champion(family_run):
    registry = family_run["resources"]["mlflow"]
    assert str(registry.get_version_by_alias("image-gan", "champion").version) == "1"
    assert str(registry.get_version_by_alias("image-gan", "challenger").version) == "2"
    [check] = [e for e in family_run["worse"].get_asset_check_evaluations() if e.check_name == "beats_champion"]
    assert check.passed is False
    assert "label_accuracy" in check.metadata["rule"].value  # the guard is part of the decision
    good = metadata_of(family_run["good"], image_gan)["fid_classifier"]
    worse = metadata_of(family_run["worse"], image_gan)["fid_classifier"]
    assert worse > good


def test_gallery_shows_lineage_and_escapes_names(family_run):
    index = Path(metadata_of(family_run["good"], image_gallery)["index"])
    assert index.parent.name == "1"
    page = index.read_text()
    assert HOSTILE_CLASS not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    for name in ("samples.png", "interpolation.png", "nearest_neighbours.png"):
        assert Image.open(index.parent / name).size[0] > 100
    assert "image-gan version 1" in page and metadata_of(family_run["good"], image_corpus)["data_version"] in page
    samples = np.asarray(Image.open(index.parent / "samples.png"))
    assert samples.shape[0] > samples.shape[1] / 8 * 2  # one row per class
    credentials = {name: verify_file(index.parent / name) for name in ("samples.png", "nearest_neighbours.png")}
    assert all(found.valid and found.fields["model_version"] == "1" for found in credentials.values())
    assert credentials["nearest_neighbours.png"].source_type == COMPOSITE  # training images beside the samples
    cover = json.loads((index.parent / "cover.json").read_text())  # each item rateable: it names its first seed
    assert [(item["src"], item["seed"]) for item in cover] == [("samples.png", 0), ("interpolation.png", 0)]


def test_champion_samples_in_a_clean_process(family_run, tmp_path):
    tracking_uri = family_run["resources"]["mlflow"].tracking_uri
    script = (
        "import json, mlflow, numpy as np\n"
        "m = mlflow.pyfunc.load_model('models:/image-gan@champion')\n"
        "a = m.predict({'n': 6, 'seed': 3, 'label': 'bar'})\n"
        "b = m.predict({'n': 6, 'seed': 3, 'label': 'bar'})\n"
        "c = m.predict({'n': 6, 'seed': 3, 'label': 'blob'})\n"
        "import sys\n"
        "print(json.dumps({'shape': list(a.shape), 'dtype': str(a.dtype), 'same': bool((a == b).all()),"
        " 'label_matters': bool((a != c).any()),"
        " 'std': float(a.std()), 'code': sys.modules['models.image_gan.pyfunc'].__file__,"
        " 'dagster_loaded': 'dagster' in sys.modules}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {**result, "shape": [6, 32, 32, 1], "dtype": "uint8", "same": True, "label_matters": True}
    assert result["std"] > 5  # not a blank image
    project = str(Path(__file__).resolve().parents[1])
    assert not result["code"].startswith(project)  # the code shipped with the model, not this checkout
    assert result["dagster_loaded"] is False


def test_sample_command_uses_only_the_registry(family_run, tmp_path):
    out = tmp_path / "grid.png"
    env = {**os.environ, "ATELIER_DATA_ROOT": str(family_run["root"] / "data")}
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "atelier"), "sample", "image-gan/1", "-n", "8", "-o", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    grid = np.asarray(Image.open(out))
    assert grid.shape[1] > grid.shape[0] and grid.std() > 5
    credential = verify_file(out)  # what `atelier sample` writes carries the version it sampled
    assert credential.valid and credential.fields == {**credential.fields, "model_version": "1", "seeds": "0"}
