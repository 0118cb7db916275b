"""The MIDI and video ingest assets through a real Dagster materialize, bad files mixed in."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pretty_midi
import pyarrow.parquet as pq

from assets.ingest import CORPUS_ASSET_OF
from corpora.ingest import load_manifest
from corpora.midi import HOLD, NOTE_OFF
from corpora.shards import read_shards, tensors_from_table
from corpora.video import write_video
from tests.conftest import check_outcomes, data_version_of, materialization_metadata

midi_corpus = CORPUS_ASSET_OF["midi"]
video_corpus = CORPUS_ASSET_OF["video"]

SOPRANO_TO_BASS = (72, 67, 60, 48)


def write_chorale(path: Path, bars: int = 4, shift: int = 0) -> None:
    """Four one-note-per-beat voices at 120 qpm: a quarter note is 0.5 s = 4 steps."""
    midi = pretty_midi.PrettyMIDI(initial_tempo=120)
    for base in SOPRANO_TO_BASS:
        voice = pretty_midi.Instrument(program=0)
        for beat in range(bars * 4):
            pitch = base + shift + (beat % 3)
            voice.notes.append(pretty_midi.Note(velocity=80, pitch=pitch, start=beat * 0.5, end=beat * 0.5 + 0.5))
        midi.instruments.append(voice)
    midi.write(str(path))


def rejected_by_path(manifest_path: Path) -> dict[str, dict]:
    manifest = load_manifest(manifest_path)
    table = pq.read_table(manifest_path.parent / manifest["rejected"]["path"])
    return {row["source_path"]: row for row in table.to_pylist()}


def test_midi_asset_ingests_chorales_and_rejects_bad_files(materialize_asset, tmp_path):
    raw = tmp_path / "midi"
    raw.mkdir()
    for index in range(3):
        write_chorale(raw / f"chorale-{index}.mid", shift=index)
    (raw / "empty.mid").write_bytes(b"")
    (raw / "noise.mid").write_bytes(np.random.default_rng(0).bytes(500))
    (raw / "text.midi").write_text("MIDI? no, a shopping list\n")
    (raw / "header-only.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x00\x01\xe0")
    silent = pretty_midi.PrettyMIDI()
    silent.instruments.append(pretty_midi.Instrument(program=0))
    silent.write(str(raw / "no-notes.mid"))
    whole = (raw / "chorale-0.mid").read_bytes()
    (raw / "truncated.mid").write_bytes(whole[: len(whole) // 3])

    result = materialize_asset(midi_corpus, {"source_dir": str(raw), "max_reject_rate": 0.9})
    assert result.success
    metadata = materialization_metadata(result, midi_corpus)
    assert (metadata["files_seen"], metadata["ingested"], metadata["rejected"]) == (9, 3, 6)
    assert metadata["accounted_for"] is True
    assert "data:image/png;base64," in metadata["preview"]
    rejected = rejected_by_path(Path(metadata["manifest"]))
    assert set(rejected) == {"empty.mid", "noise.mid", "text.midi", "header-only.mid", "no-notes.mid", "truncated.mid"}
    assert all(row["message"] for row in rejected.values())

    manifest_path = Path(metadata["manifest"])
    manifest = load_manifest(manifest_path)
    shards = {t: [manifest_path.parent / s["path"] for s in info["shards"]] for t, info in manifest["tables"].items()}
    notes = read_shards(shards["notes"]).to_pandas()
    first = notes[notes.source_path == "chorale-0.mid"]
    assert len(first) == 4 * 16
    soprano = first[first.pitch >= 72].sort_values("onset_step")
    assert soprano.onset_step.tolist() == list(range(0, 64, 4))
    assert set(soprano.duration_steps) == {4}

    melody = tensors_from_table(read_shards(shards["melody_windows"]), "tokens")
    assert melody.shape[1:] == (32,)
    # the top voice of chorale-0 starts 72, held for 4 steps, then 73, ...
    assert melody[0][:8].tolist() == [72, HOLD, HOLD, HOLD, 73, HOLD, HOLD, HOLD]
    assert NOTE_OFF not in melody[0][:31]

    voices = tensors_from_table(read_shards(shards["chorale_windows"]), "voices")
    assert voices.shape[1:] == (4, 32)
    assert [int(row[0]) for row in voices[0]] == list(SOPRANO_TO_BASS)  # soprano first, bass last
    assert check_outcomes(result)["schema_matches"] is True


def test_video_asset_cuts_clips_and_rejects_broken_files(materialize_asset, tmp_path):
    raw = tmp_path / "video"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        frames = np.repeat(np.linspace(0, 255, 40, dtype=np.uint8)[:, None, None, None], 32, axis=1)
        frames = np.repeat(np.repeat(frames, 32, axis=2), 3, axis=3)
        frames[:, index * 8 : index * 8 + 8] = rng.integers(0, 255, (40, 8, 32, 3), dtype=np.uint8)
        write_video(raw / f"clip-{index}.mp4", frames, fps=10)
    good = (raw / "clip-0.mp4").read_bytes()
    (raw / "cut.mp4").write_bytes(good[: len(good) // 2])
    (raw / "empty.webm").write_bytes(b"")
    (raw / "notes.mov").write_text("not a video\n")

    config = {"source_dir": str(raw), "resolution": 16, "clip_frames": 10, "clip_hop_frames": 10,
              "max_reject_rate": 0.9}
    result = materialize_asset(video_corpus, config)
    assert result.success
    metadata = materialization_metadata(result, video_corpus)
    # cut.mp4 has a damaged tail: salvaged up to its last good frame (the default policy), with a notice
    assert (metadata["files_seen"], metadata["ingested"], metadata["rejected"]) == (5, 3, 2)
    assert metadata["notices"] == 1
    assert set(rejected_by_path(Path(metadata["manifest"]))) == {"empty.webm", "notes.mov"}

    manifest_path = Path(metadata["manifest"])
    manifest = load_manifest(manifest_path)
    clips = read_shards(manifest_path.parent / s["path"] for s in manifest["tables"]["clips"]["shards"])
    salvaged = clips["source_path"].to_pylist().count("cut.mp4")
    assert 1 <= salvaged < 4  # of the 4 clips the whole file holds
    assert metadata["rows_clips"] == 8 + salvaged  # 40 frames at 10 fps -> 4 clips of 10 per whole file
    frames = tensors_from_table(clips, "frames")
    assert frames.shape == (8 + salvaged, 10, 16, 16, 3) and frames.dtype == np.uint8
    # the brightness ramp survives resampling and H.264: clip 1 is brighter than clip 0
    first_file = [i for i, p in enumerate(clips["source_path"].to_pylist()) if p == "clip-0.mp4"]
    means = [frames[i, :, 12:].mean() for i in first_file]
    assert means == sorted(means) and means[-1] - means[0] > 100

    again = materialize_asset(video_corpus, config)
    assert materialization_metadata(again, video_corpus)["decoded_this_run"] is False
    assert data_version_of(again, video_corpus) == data_version_of(result, video_corpus)
