"""The painting family end to end in Dagster: JPEG pictures -> FastGAN in MLflow -> gallery."""
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

from assets.ingest import CORPUS_ASSET_OF
from assets.painting_gan import painting_gallery, painting_gan
from models.painting_gan.config import PaintingGanConfig
from pipelines.definitions import build_resources
from provenance.credentials import COMPOSITE, verify_file
from tests.tiny_corpora import write_paintings

painting_corpus = CORPUS_ASSET_OF["painting"]

TINY_TRAINING = {"steps": 4, "batch_size": 4, "eval_samples": 16}
TINY_GALLERY = {"transfer_steps": 6, "transfer_size": 48, "triptychs": 1}


@pytest.fixture(scope="module")
def painting_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("painting")
    write_paintings(root / "data" / "raw" / "painting")
    resources = build_resources(str(root / "data"))
    resources["mlflow"].initialize()
    result = dg.materialize(
        [painting_corpus, painting_gan, painting_gallery], resources=resources, instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {"painting_corpus": {"config": {"heldout_percent": 0}},
                            "painting_gan": {"config": TINY_TRAINING}, "painting_gallery": {"config": TINY_GALLERY}}},
    )
    assert result.success
    return {"root": root, "resources": resources, "result": result}


def metadata_of(result, asset) -> dict:
    [event] = result.asset_materializations_for_node(asset.op.name)
    return {k: v.value for k, v in event.metadata.items()}


def test_painting_gan_is_registered_with_its_metric_floor_and_ceiling(painting_run):
    trained = metadata_of(painting_run["result"], painting_gan)
    assert trained["model_version"] == "1" and trained["steps"] == 4
    assert trained["kid_style_floor"] < trained["kid_style_ceiling"]
    assert np.isfinite(trained["kid_style"]) and "random" in trained["feature_network"]
    assert "real_vs_real" in trained["metrics_table"] and "untrained_generator" in trained["metrics_table"]
    registry = painting_run["resources"]["mlflow"]
    champion = registry.get_version_by_alias("painting-gan", "champion")
    assert str(champion.version) == "1" and float(champion.tags["kid_style"]) == pytest.approx(trained["kid_style"])
    run = registry.client().get_run(champion.run_id)
    assert run.inputs.dataset_inputs[0].dataset.name == "painting_corpus"


def test_gallery_has_the_grids_and_a_triptych_that_names_its_feature_network(painting_run):
    gallery = metadata_of(painting_run["result"], painting_gallery)
    index = Path(gallery["index"])
    page = index.read_text()
    for name in ("samples.png", "style_mixing.png", "truncation.png", "style-transfer-0.png"):
        assert f'src="{name}"' in page
        assert Image.open(index.parent / name).size[0] > 100
    assert "random_cnn" in page and gallery["style_transfer_network"].startswith("random_cnn")
    triptych = np.asarray(Image.open(index.parent / "style-transfer-0.png"))
    assert triptych.shape[1] > 2 * triptych.shape[0]  # three panels side by side
    credentials = {name: verify_file(index.parent / name) for name in ("samples.png", "style-transfer-0.png")}
    assert all(found.valid and found.fields["model_name"] == "painting-gan" for found in credentials.values())
    assert credentials["style-transfer-0.png"].source_type == COMPOSITE  # real paintings beside the result
    assert json.loads((index.parent / "cover.json").read_text())[0] == {
        "kind": "img", "src": "samples.png", "caption": f"painting-gan version {gallery['model_version']}, seed 0", "seed": 0}


def test_painting_gan_samples_and_style_mixes_in_a_clean_process(painting_run, tmp_path):
    script = (
        "import json, sys, mlflow\n"
        "m = mlflow.pyfunc.load_model('models:/painting-gan@champion')\n"
        "a = m.predict({'n': 3, 'seed': 1, 'truncation_psi': 0.5})\n"
        "b = m.predict({'n': 3, 'seed': 1, 'truncation_psi': 0.5})\n"
        "mix = m.predict({'mix': [1, 2], 'crossover': 2})\n"
        "print(json.dumps({'shape': list(a.shape), 'dtype': str(a.dtype), 'same': bool((a == b).all()),\n"
        "                  'mix': list(mix.shape), 'dagster': 'dagster' in sys.modules}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": painting_run["resources"]["mlflow"].tracking_uri, "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    side = PaintingGanConfig.profile("demo").resolution  # the asset's default profile
    assert result == {"shape": [3, side, side, 3], "dtype": "uint8", "same": True, "mix": [1, side, side, 3],
                      "dagster": False}


def test_style_transfer_command_repaints_a_picture_and_says_which_features_it_used(painting_run, tmp_path):
    pictures = sorted((painting_run["root"] / "data" / "raw" / "painting").glob("*.jpg"))
    out = tmp_path / "styled.png"
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "atelier"), "style-transfer", str(pictures[0]), "--style", str(pictures[1]),
         "-o", str(out), "--steps", "8", "--size", "48", "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "random_cnn" in completed.stdout
    before, after = (float(x) for x in completed.stdout.split("style loss ")[1].split(" -> "))
    assert after < before
    styled = np.asarray(Image.open(out))
    assert styled.shape == (48, 48, 3) and styled.std() > 5
