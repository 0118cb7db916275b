"""The music family end to end in Dagster: MIDI corpus -> music VAE in MLflow -> audio gallery."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import dagster as dg
import numpy as np
import pretty_midi
import pytest

from assets.ingest import CORPUS_ASSET_OF
from assets.music_vae import GALLERY_SEED, music_gallery, music_vae
from common.mlflow_store import resolve_version
from models.music_vae import CHAMPION_RULE
from models.music_vae.sampling import (
    GALLERY_BARS, GALLERY_FORBIDS_CONSECUTIVES, GALLERY_TEMPERATURE, RHYTHM_TEMPERATURE, sample,
)
from models.music_vae.tokens import tokens_to_midi_bytes
from pipelines.definitions import build_resources
from provenance.credentials import Provenance, verify_file

midi_corpus = CORPUS_ASSET_OF["midi"]

VOICES = (72, 67, 60, 48)
MAJOR = (0, 2, 4, 5, 7, 9, 11, 12)


def write_chorales(raw: Path, pieces: int = 12) -> None:
    """Four voices in quarter notes on a major scale, each piece another tune (a seeded random
    walk per voice) in another key: distinct works, so the held-out split has groups to deal."""
    raw.mkdir(parents=True)
    for index in range(pieces):
        rng = np.random.default_rng(index)
        midi = pretty_midi.PrettyMIDI(initial_tempo=120)
        for base in VOICES:
            instrument = pretty_midi.Instrument(program=0)
            degrees = np.clip(np.cumsum(rng.integers(-2, 3, 16)) + 3, 0, len(MAJOR) - 1)
            for beat, degree in enumerate(degrees):
                pitch = base + index % 5 + MAJOR[degree]
                instrument.notes.append(pretty_midi.Note(80, int(pitch), beat * 0.5, beat * 0.5 + 0.5))
            midi.instruments.append(instrument)
        midi.write(str(raw / f"piece-{index:02d}.mid"))


@pytest.fixture(scope="module")
def music_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("music")
    write_chorales(root / "raw")
    resources = build_resources(str(root / "data"))
    resources["mlflow"].initialize()
    config = {"ops": {
        "midi_corpus": {"config": {"source_dir": str(root / "raw"), "heldout_percent": 40}},
        "music_vae": {"config": {"steps": 6, "eval_samples": 8}},
    }}
    result = dg.materialize([midi_corpus, music_vae, music_gallery], resources=resources, run_config=config,
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    return {"root": root, "resources": resources, "result": result}


def metadata_of(result, asset) -> dict:
    [event] = result.asset_materializations_for_node(asset.op.name)
    return {k: v.value for k, v in event.metadata.items()}


def test_music_vae_is_registered_with_lineage_and_metrics(music_run):
    trained = metadata_of(music_run["result"], music_vae)
    assert trained["model_version"] == "1" and trained["steps_per_kind"] == {"chorale": 6, "melody": 6}
    assert 0.0 <= trained["sampled_accuracy"] <= 1.0
    # the rule's numbers are the means over the bundle's kinds, and the version is tagged with both
    for name in CHAMPION_RULE.metrics:
        assert trained[name] == pytest.approx(np.mean([trained[f"{kind}.{name}"] for kind in ("chorale", "melody")]))
    assert trained["neg_elbo_per_token"] > 0 and 0.0 <= trained["prior_statistics_overlap"] <= 1.0
    assert not [name for name in trained if name.split(".")[-1] == "nll_per_token"]  # named for what each one is
    assert "chorale.unigram_true_nll_per_token" in trained
    assert "most frequent" in trained["metrics_table"].lower() or "most_frequent" in trained["metrics_table"]
    assert "reconstruction loss at posterior mean" in trained["metrics_table"]
    registry = music_run["resources"]["mlflow"]
    assert str(registry.get_version_by_alias("music-vae", "champion").version) == "1"
    tags = registry.client().get_model_version("music-vae", "1").tags
    assert set(CHAMPION_RULE.metrics) <= set(tags)
    run = registry.client().get_run(registry.client().get_model_version("music-vae", "1").run_id)
    corpus = metadata_of(music_run["result"], midi_corpus)
    assert run.data.tags["data_version"] == corpus["data_version"]
    assert run.inputs.dataset_inputs[0].dataset.name == "midi_corpus"


def test_gallery_has_audio_that_is_not_silent_and_lasts_as_long_as_the_midi(music_run):
    index = Path(metadata_of(music_run["result"], music_gallery)["index"])
    page = index.read_text()
    assert page.count("<audio") >= 8 + 5 and "music-vae version 1" in page
    for midi_path in sorted(index.parent.glob("chorale-*.mid")):
        with wave.open(str(midi_path.with_suffix(".wav"))) as wav:
            frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
            seconds = wav.getnframes() / wav.getframerate()
        midi_seconds = pretty_midi.PrettyMIDI(str(midi_path)).get_end_time()
        assert np.abs(frames).max() > 1000  # audible
        assert abs(seconds - midi_seconds) <= 1.0
        assert (index.parent / f"{midi_path.stem}-roll.png").stat().st_size > 100
        assert (index.parent / f"{midi_path.stem}-mel.png").stat().st_size > 100
    assert len(list(index.parent.glob("interpolation-*.mid"))) == 5
    cover = json.loads((index.parent / "cover.json").read_text())  # the rating site's samples name their seed
    assert [item["kind"] for item in cover] == ["img", "audio"] and {item["seed"] for item in cover} == {GALLERY_SEED}


def test_every_gallery_file_carries_a_credential_naming_the_version_that_made_it(music_run):
    gallery = metadata_of(music_run["result"], music_gallery)
    files = [path for path in Path(gallery["index"]).parent.iterdir() if path.suffix in (".wav", ".png", ".mid")]
    assert {path.suffix for path in files} == {".wav", ".png", ".mid"}
    version = music_run["resources"]["mlflow"].client().get_model_version("music-vae", gallery["model_version"])
    for path in files:
        found = verify_file(path)
        assert found.valid, (path.name, found.problems)
        assert found.fields == {**found.fields, "model_name": "music-vae", "model_version": gallery["model_version"],
                                "mlflow_run_id": version.run_id, "git_commit": version.tags["git_commit"]}


def test_atelier_sample_signs_with_the_version_its_reference_names_and_that_version_s_licence_tags(music_run):
    client = music_run["resources"]["mlflow"].client()
    client.set_model_version_tag("music-vae", "1", "training_licences", '{"CC0-1.0": 12}')  # as the licences part tags
    by_alias, by_number = resolve_version(client, "music-vae", "champion"), resolve_version(client, "music-vae", "1")
    assert str(by_alias.version) == str(by_number.version) == "1"
    fields = Provenance.of_model_version(by_alias, [5]).fields()
    assert fields == {**fields, "model_name": "music-vae", "model_version": "1", "mlflow_run_id": by_alias.run_id,
                      "data_version": by_alias.tags["data_version"], "seeds": "5", "training_licences": {"CC0-1.0": 12}}
    assert fields["training_attribution"] == by_alias.tags["training_attribution"]  # as registration tagged it


def test_gallery_plays_long_phrases_drawn_as_the_evaluation_measures_them(music_run):
    index = Path(metadata_of(music_run["result"], music_gallery)["index"])
    model, _ = music_run["resources"]["mlflow"].load_pyfunc_model("music-vae", "1")
    chorale = model.unwrap_python_model().models["chorale"]
    drawn = sample(chorale, 4, seed=0, temperature=GALLERY_TEMPERATURE, bars=GALLERY_BARS,
                   forbid_consecutives=GALLERY_FORBIDS_CONSECUTIVES)
    assert [(index.parent / f"chorale-{i}.mid").read_bytes() for i in range(4)] == [tokens_to_midi_bytes(w) for w in drawn]
    page = " ".join(index.read_text().split())
    assert "no two voices make consecutive fifths or octaves, nor the outer voices hidden ones" in page
    assert f"temperature {GALLERY_TEMPERATURE:g} and when each voice moves at {RHYTHM_TEMPERATURE:g}" in page
    trained = metadata_of(music_run["result"], music_vae)
    assert f"temperature {GALLERY_TEMPERATURE:g} (the gallery's; rhythm at {RHYTHM_TEMPERATURE:g})" in trained["metrics_table"]
    assert "| gallery | " in trained["metrics_table"]


def test_music_vae_samples_and_interpolates_in_a_clean_process(music_run, tmp_path):
    phrase = sorted((music_run["root"] / "raw").glob("*.mid"))[0].read_bytes()
    (tmp_path / "phrase.mid").write_bytes(phrase)
    script = (
        "import json, mlflow, io, pretty_midi, sys\n"
        "m = mlflow.pyfunc.load_model('models:/music-vae@champion')\n"
        "songs = m.predict({'n': 3, 'seed': 1, 'temperature': 1.0, 'mode': 'chorale'})\n"
        "a = open('phrase.mid', 'rb').read()\n"
        "path = m.predict({'interpolate': [a, a], 'steps': 4, 'mode': 'chorale'})\n"
        "voices = [len(pretty_midi.PrettyMIDI(io.BytesIO(s)).instruments) for s in songs]\n"
        "print(json.dumps({'n': len(songs), 'voices': voices, 'steps': len(path), 'dagster': 'dagster' in sys.modules}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": music_run["resources"]["mlflow"].tracking_uri, "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["n"] == 3 and result["steps"] == 4 and result["dagster"] is False
    assert all(v >= 1 for v in result["voices"])
