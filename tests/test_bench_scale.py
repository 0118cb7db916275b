"""The scale bench's synthetic corpora: real files the ingest reads, each one unique."""
import symusic

from bench.scale import write_midis
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
