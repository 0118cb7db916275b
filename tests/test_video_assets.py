"""The video family end to end in Dagster: MP4 clips -> ConvLSTM + PixelCNN in MLflow -> gallery."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from assets.ingest import CORPUS_ASSET_OF
from assets.video_rnn import video_gallery, video_rnn
from corpora.video import read_video_frames
from models.video_rnn import FAMILY
from pipelines.definitions import build_resources
from provenance.credentials import COMPOSITE, verify_file
from tests.tiny_corpora import write_videos

video_corpus = CORPUS_ASSET_OF["video"]

TINY_TRAINING = {"steps": 3, "batch_size": 4}
CORPUS_FPS = 5.0  # not the default 10, so the gallery must take its frame rate from the corpus


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    write_videos(root / "data" / "raw" / "video")
    resources = build_resources(str(root / "data"))
    resources["mlflow"].initialize()
    result = dg.materialize(
        [video_corpus, video_rnn, video_gallery], resources=resources, instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {"video_corpus": {"config": {"heldout_percent": 50, "fps": CORPUS_FPS}},
                            "video_rnn": {"config": TINY_TRAINING},
                            "video_gallery": {"config": {"clips": 2, "sampled_clips": 1}}}},
    )
    assert result.success
    return {"root": root, "resources": resources, "result": result}


def metadata_of(result, asset) -> dict:
    [event] = result.asset_materializations_for_node(asset.op.name)
    return {k: v.value for k, v in event.metadata.items()}


def test_video_rnn_reports_the_baseline_beside_the_model_and_registers(video_run):
    trained = metadata_of(video_run["result"], video_rnn)
    assert trained["model_version"] == "1" and trained["steps"] == 3
    assert trained["heldout_clips"] >= 1 and trained["bits_per_dim"] > 0
    assert np.isfinite(trained["heldout_mse"]) and trained["baseline_mse"] > 0
    assert trained["score_vs_copy_last"] > 0 and np.isfinite(trained["heldout_ssim"])
    assert "copy" in trained["metrics_table"].lower() and "score" in trained["metrics_table"]
    registry = video_run["resources"]["mlflow"]
    champion = registry.get_version_by_alias(FAMILY.name, "champion")
    for name in FAMILY.rule.metrics:  # every number the rule reads is in the summary and tagged
        assert float(champion.tags[name]) == pytest.approx(trained[name], abs=1e-6)


def test_gallery_videos_decode_with_every_frame_and_the_page_plays_them(video_run):
    from PIL import Image

    gallery = metadata_of(video_run["result"], video_gallery)
    index = Path(gallery["index"])
    page = index.read_text()
    videos = sorted(index.parent.glob("*.mp4"))
    assert [v.name for v in videos] == ["clip-0-mean.mp4", "clip-0-sample.mp4", "clip-1-mean.mp4"]
    for video in videos:
        frames = read_video_frames(video)
        assert frames.shape[0] == 20 and frames.shape[2] > 3 * frames.shape[1] - 1  # 10 + 10, three panels
        assert f'src="{video.name}"' in page and (index.parent / video.with_suffix(".gif").name).is_file()
        with Image.open(video.with_suffix(".gif")) as gif:  # played at the corpus' frame rate
            assert gif.info["duration"] == round(1000 / CORPUS_FPS)
    assert gallery["fps"] == CORPUS_FPS
    shown = [clip["source"] for clip in gallery["clips"] if clip["mode"] == "mean"]
    assert len(shown) == 2 and len(set(shown)) == 2  # two clips, of two different files
    assert "Held-out other clips only" in page and page.count("<th>step</th>") >= 2  # an HTML table per kind of footage
    assert (index.parent / "error_by_horizon.png").stat().st_size > 1000
    for clip in [*videos, *(video.with_suffix(".gif") for video in videos)]:
        found = verify_file(clip)  # truth beside prediction: a composite
        assert found.valid and found.source_type == COMPOSITE and found.fields["model_version"] == gallery["model_version"]
    assert verify_file(index.parent / "error_by_horizon.png").state == "none"  # a plot, not generated media
    cover = json.loads((index.parent / "cover.json").read_text())  # the clip is rateable, the plot is not a sample
    assert [(item["src"], item.get("seed")) for item in cover] == [("clip-0-mean.mp4", 0), ("error_by_horizon.png", None)]


def test_video_rnn_continues_a_clip_in_a_clean_process(video_run, tmp_path):
    clip = read_video_frames(sorted((video_run["root"] / "data" / "raw" / "video").glob("*.mp4"))[0])[:10]
    np.save(tmp_path / "context.npy", clip)
    script = (
        "import json, sys, numpy as np, mlflow\n"
        "m = mlflow.pyfunc.load_model('models:/video-rnn@champion')\n"
        "context = np.load('context.npy')\n"
        "mean = m.predict({'context': context, 'horizon': 4, 'mode': 'mean'})\n"
        "a = m.predict({'context': context, 'horizon': 2, 'mode': 'sample', 'seed': 1})\n"
        "b = m.predict({'context': context, 'horizon': 2, 'mode': 'sample', 'seed': 1})\n"
        "own = m.predict({'n': 2, 'seed': 0})\n"  # no context: the held-out contexts the bundle keeps
        "shown = m.predict({'n': 1, 'seed': 0, 'mode': 'sample', 'horizon': 2, 'with_context': True})\n"
        "print(json.dumps({'mean': list(mean.shape), 'dtype': str(mean.dtype), 'sample': list(a.shape),\n"
        "                  'same': bool((a == b).all()), 'own': list(own.shape), 'shown': list(shown.shape),\n"
        "                  'dagster': 'dagster' in sys.modules}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": video_run["resources"]["mlflow"].tracking_uri, "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"mean": [4, 64, 64, 3], "dtype": "uint8", "sample": [2, 64, 64, 3], "same": True,
                      "own": [2, 10, 64, 64, 1], "shown": [1, 12, 64, 64, 1], "dagster": False}  # the model's one channel
