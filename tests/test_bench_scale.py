"""The scale bench: its synthetic corpora are real files the ingest reads, each one unique; a
size's row measures a full ingest and one-file changes of each kind; a child it starts reports
its own peak memory."""
import subprocess
import sys

import symusic

from bench.memory import own_peak_bytes
from bench.scale import PROJECT, bench_size, write_midis
from corpora.ingest import DecodeTask
from corpora.midi import MidiCorpusConfig, decode


def test_the_scale_bench_writes_unique_midi_files_of_four_voices_of_quarter_notes(tmp_path):
    write_midis(tmp_path, 5, 12)
    files = sorted(tmp_path.rglob("*.mid"))
    assert sorted(f.name for f in files) == [f"{index:07d}.mid" for index in range(5, 17)]
    assert {f.parent.name for f in files} == {f"p{i}" for i in range(10)}
    for path in files:
        score = symusic.Score(str(path))
        assert score.tpq == 220 and [round(tempo.qpm) for tempo in score.tempos] == [120]
        assert [track.note_num() for track in score.tracks] == [32] * 4
        starts = [note.time for note in score.tracks[0].notes]
        assert starts == [220 * step for step in range(32)]
    config = MidiCorpusConfig()
    decoded = [decode(DecodeTask(str(path), path.name, config)) for path in files]
    assert len({file.content_hash for file in decoded}) == 12  # no two files the same music


def test_a_size_of_the_scale_bench_times_a_full_ingest_and_each_kind_of_one_file_change(tmp_path):
    row = bench_size("midi", 24, tmp_path, resume=False, rounds=1)
    assert row["files"] == 24 and row["full_s"] > 0 and row["peak_mb"] > row["main_peak_mb"] > 0
    assert all(row[f"{change}_s"] > 0 for change in ("add", "edit", "remove"))
    low, high = row["one_file_share_range"]
    assert 0 < low <= row["one_file_share"] <= high
    assert not (tmp_path / "midi-24").exists()  # the corpus and its shards are removed afterwards


def test_a_child_reports_its_own_peak_memory_not_its_parents():
    held = b"\x01" * (300 * 2**20)  # a large parent, resident: ru_maxrss would pass its size on to its child
    child = subprocess.run([sys.executable, "-c", "from bench.memory import own_peak_bytes; print(own_peak_bytes())"],
                           cwd=PROJECT, capture_output=True, text=True, check=True)
    assert 1 * 2**20 < int(child.stdout) < 100 * 2**20 < own_peak_bytes()
    del held
