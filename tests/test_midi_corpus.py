"""The MIDI corpus without Dagster: real MIDI files written with pretty_midi, ingested by the shared engine.

Expected values are computed here from the notes each file was written with (and, for the
notes table, from symusic's raw ticks with an independent rounding), never by calling the
module's own helpers, so a bug in corpora.midi shows up as a mismatch.
"""
from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import symusic

from corpora.ingest import DecodeTask, IngestSettings, ingest
from corpora.midi import (
    CHORALE_TABLE,
    HOLD,
    MELODY_TABLE,
    MIDI,
    NOTE_OFF,
    NOTES_TABLE,
    NUM_MELODY_CLASSES,
    MidiCorpusConfig,
    decode,
    melody_tokens,
    piece_windows,
    skylines,
    tokens_to_notes,
    voices_to_pianoroll,
)
from corpora.shards import read_shards, tensors_from_table

STEP_S = 0.125  # one 16th at 120 qpm
RESOLUTION = 480
CONFIG = MidiCorpusConfig()
WINDOW = CONFIG.window_steps
BAR = 16  # steps in a 4/4 bar of 16ths

# ----------------------------------------------------------------------------- writing MIDI


def line(rng, low, high, total_steps, durations=(2, 4, 4, 4, 8), rest_chance=0.0):
    """A monophonic line [(pitch, onset_step, duration_steps, velocity)] filling total_steps."""
    notes, step = [], 0
    while step < total_steps:
        duration = min(int(rng.choice(durations)), total_steps - step)
        if rng.random() >= rest_chance:
            notes.append((int(rng.integers(low, high + 1)), step, duration, int(rng.integers(40, 120))))
        step += duration
    return notes


def midi_bytes(parts, qpm=120.0, time_signatures=()):
    """parts: [(name, program, is_drum, notes)] with notes on the 16th grid at `qpm`;
    time_signatures: [(numerator, denominator, step)] (none: pretty_midi writes 4/4 at 0)."""
    step_s = 60.0 / qpm / 4
    pm = pretty_midi.PrettyMIDI(resolution=RESOLUTION, initial_tempo=qpm)
    pm.time_signature_changes = [pretty_midi.TimeSignature(n, d, step * step_s) for n, d, step in time_signatures]
    for name, program, is_drum, notes in parts:
        instrument = pretty_midi.Instrument(program=program, is_drum=is_drum, name=name)
        for pitch, onset, duration, velocity in notes:
            instrument.notes.append(
                pretty_midi.Note(velocity=velocity, pitch=pitch, start=onset * step_s, end=(onset + duration) * step_s)
            )
        pm.instruments.append(instrument)
    out = io.BytesIO()
    pm.write(out)
    return out.getvalue()


def header(fmt, tracks, division):
    return b"MThd" + struct.pack(">IHHH", 6, fmt, tracks, division)


def track(body):
    return b"MTrk" + struct.pack(">I", len(body)) + body


END_OF_TRACK = b"\x00\xff\x2f\x00"
ONE_NOTE = b"\x00\x90\x3c\x40\x60\x80\x3c\x00"  # middle C, 96 ticks


def build_corpus(raw: Path) -> dict:
    rng = np.random.default_rng(7)
    raw.mkdir(parents=True)
    soprano, alto = line(rng, 67, 79, 64), line(rng, 60, 69, 64)
    tenor, bass = line(rng, 52, 62, 64), line(rng, 36, 50, 64)
    drums = [(81, step, 1, 100) for step in range(0, 64, 4)]  # high: a skyline that kept drums would show it
    # parts stored out of pitch order, so the corpus has to sort them soprano..bass
    quartet_a = [("Alto", 52, False, alto), ("Bass", 32, False, bass), ("Soprano", 0, False, soprano),
                 ("Tenor", 48, False, tenor), ("Drums", 0, True, drums)]
    b_parts = {name: line(rng, low, high, 48) for name, low, high in
               [("S", 67, 79), ("A", 60, 69), ("T", 52, 62), ("B", 36, 50)]}
    descant = [(96, 0, 2, 80), (98, 20, 2, 80)]  # highest, but fewest notes: not one of the 4 voices
    quartet_b = [("T", 0, False, b_parts["T"]), ("Descant", 73, False, descant), ("S", 0, False, b_parts["S"]),
                 ("B", 0, False, b_parts["B"]), ("A", 0, False, b_parts["A"])]
    melody = [(60, 0, 4, 90), (60, 4, 4, 90), (62, 8, 2, 90), (64, 12, 4, 90), (65, 16, 8, 90),
              (67, 28, 2, 90), (72, 30, 10, 90)]  # a repeated note, rests, 40 steps: the tail is padded
    piano = [("RH", 0, False, [(int(rng.integers(55, 85)), int(o), int(rng.integers(1, 9)), 70)
                               for o in rng.integers(0, 60, 40)]),
             ("LH", 0, False, [(int(rng.integers(40, 70)), int(o), int(rng.integers(1, 12)), 60)
                               for o in rng.integers(0, 60, 20)])]
    good = {
        "quartet_a.mid": quartet_a,
        "sub/quartet_b.midi": quartet_b,
        "melody.mid": [("Flute", 73, False, melody)],
        "piano.mid": piano,
    }
    for relpath, parts in good.items():
        (raw / relpath).parent.mkdir(parents=True, exist_ok=True)
        (raw / relpath).write_bytes(midi_bytes(parts))
    # off the grid (ticks at 480 per quarter, 120 per step): onset and end are each rounded
    # half up, so the first note keeps touching the next step's grid line (symusic's resample,
    # which rounds the duration, would make it 1 step long)
    offgrid_ticks = [(60, 59, 122), (62, 180, 60), (64, 300, 10), (65, 419, 300)]
    pm = pretty_midi.PrettyMIDI(resolution=RESOLUTION, initial_tempo=120.0)
    instrument = pretty_midi.Instrument(program=40, name="Violin")
    tick_s = STEP_S / 120
    instrument.notes = [pretty_midi.Note(100, p, t * tick_s, (t + d) * tick_s) for p, t, d in offgrid_ticks]
    pm.instruments.append(instrument)
    pm.write(str(raw / "offgrid.mid"))
    good["offgrid.mid"] = [("Violin", 40, False, [(60, 0, 2, 100), (62, 2, 1, 100), (64, 3, 1, 100), (65, 3, 3, 100)])]
    a_bytes = (raw / "quartet_a.mid").read_bytes()
    (raw / "quartet_a_copy.mid").write_bytes(a_bytes)  # the same bytes
    (raw / "quartet_a_slow.mid").write_bytes(midi_bytes(quartet_a, qpm=60.0))  # other bytes, same music

    first_track_end = 14 + 8 + struct.unpack(">I", a_bytes[18:22])[0]
    bad = {
        "empty.mid": (b"", "read", "EmptyFile"),
        "truncated.mid": (a_bytes[: len(a_bytes) // 2], "parse", "MidiParseError"),
        "truncated_at_chunk.mid": (a_bytes[:first_track_end], "validate", "MissingTracks"),
        "random.mid": (np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8).tobytes(), "parse",
                       "MidiParseError"),
        "x.mid": (b"This is a text file with a .mid extension.\n" * 20, "parse", "MidiParseError"),
        "header_only.mid": (header(1, 0, 480), "validate", "NoTracks"),
        "empty_track.mid": (header(0, 1, 480) + track(END_OF_TRACK), "validate", "NoNotes"),
        "no_notes.mid": (midi_bytes([("Piano", 0, False, []), ("Strings", 48, False, [])]), "validate", "NoNotes"),
        "crazy_tempo.mid": (header(0, 1, 480) + track(b"\x00\xff\x51\x03\x00\x00\x01" + ONE_NOTE + END_OF_TRACK),
                            "validate", "ImplausibleTempo"),
        "hours_long.mid": (header(0, 1, 480) + track(b"\x00\x90\x3c\x40\x8f\xff\xff\x7f\x80\x3c\x00" + END_OF_TRACK),
                           "validate", "ImplausibleDuration"),
        "division_zero.mid": (header(0, 1, 0) + track(ONE_NOTE + END_OF_TRACK), "validate", "InvalidDivision"),
        "notes.txt": (b"not music", "scan", "UnsupportedExtension"),
    }
    for relpath, (data, _, _) in bad.items():
        (raw / relpath).write_bytes(data)
    return {
        "good": good,
        "duplicates": {"quartet_a_copy.mid": "quartet_a.mid", "quartet_a_slow.mid": "quartet_a.mid"},
        "bad": {relpath: (stage, error_type) for relpath, (_, stage, error_type) in bad.items()},
        "chorale_order": {"quartet_a.mid": [soprano, alto, tenor, bass],
                          "sub/quartet_b.midi": [b_parts[v] for v in "SATB"]},
    }


# ----------------------------------------------------------------------------- reference computations


def naive_skyline_notes(notes, start, length):
    """Skyline notes of [(pitch, onset, duration, ...)] within [start, start+length), step by step.

    A note is struck where the top pitch changes, where a note of the top pitch starts, and at
    the window's first step if something is sounding there.
    """
    top, struck = [], []
    for t in range(start, start + length):
        sounding = [n[0] for n in notes if n[1] <= t < n[1] + n[2]]
        pitch = max(sounding) if sounding else -1
        top.append(pitch)
        struck.append(any(n[0] == pitch and n[1] == t for n in notes))
    result = []
    for i, pitch in enumerate(top):
        if pitch < 0:
            continue
        if i == 0 or pitch != top[i - 1] or struck[i]:
            result.append([pitch, i, 1])
        else:
            result[-1][2] += 1
    return [tuple(r) for r in result]


def expected_starts(total_steps):
    """Window starts of a 4/4 piece without a pickup: every bar, the last window padded."""
    hop = CONFIG.window_hop_bars * BAR
    padded = max(WINDOW, -(-total_steps // hop) * hop)
    return list(range(0, padded - WINDOW + 1, hop))


def pitched_notes(parts):
    return [n for _, _, is_drum, notes in parts if not is_drum for n in notes]


def quantized_by_symusic(path: Path):
    """Rows (pitch, onset, duration, velocity, program, track, is_drum) from symusic's raw ticks."""
    score = symusic.Score(str(path))
    tpq, spq = score.ticks_per_quarter, CONFIG.steps_per_quarter
    rows = []
    for index, t in enumerate(score.tracks):
        for note in t.notes:
            onset = round_half_up(Fraction(note.time * spq, tpq))
            end = round_half_up(Fraction((note.time + note.duration) * spq, tpq))
            rows.append((note.pitch, onset, max(end - onset, 1), note.velocity, t.program, index, t.is_drum))
    return sorted(rows)


def round_half_up(x: Fraction) -> int:
    return int((x + Fraction(1, 2)) // 1)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("midi")
    spec = build_corpus(root / "raw")
    report = ingest(MIDI, CONFIG, root / "raw", root / "out", IngestSettings(workers=2))
    tables = {name: read_shards(report.shard_paths(name)) for name in (NOTES_TABLE, MELODY_TABLE, CHORALE_TABLE)}
    return spec, report, tables, root / "raw"


def rows_of(table, source):
    return [row for row in table.to_pylist() if row["source_path"] == source]


def tensors_of(table, column, source):
    mask = np.array(table.column("source_path").to_pylist()) == source
    return tensors_from_table(table, column)[mask], np.array(table.column("start_step").to_pylist())[mask]


# ----------------------------------------------------------------------------- tests: tokens


def test_melody_tokens_hand_examples():
    def tokens(notes, total):
        pitch, onset, duration = zip(*notes) if notes else ((), (), ())
        return melody_tokens(pitch, onset, duration, total).tolist()

    assert tokens([(60, 0, 2), (62, 2, 1)], 5) == [60, HOLD, 62, NOTE_OFF, HOLD]
    assert tokens([(60, 0, 2), (60, 2, 2)], 4) == [60, HOLD, 60, HOLD]  # a repeated note is struck again
    assert tokens([(60, 0, 8), (67, 2, 2)], 8) == [60, HOLD, 67, HOLD, 60, HOLD, HOLD, HOLD]
    assert tokens([(60, 0, 4), (64, 0, 4), (67, 0, 4)], 5) == [67, HOLD, HOLD, HOLD, NOTE_OFF]
    assert tokens([(60, 2, 9)], 4) == [HOLD, HOLD, 60, HOLD]  # clipped at total_steps
    assert tokens([], 3) == [HOLD, HOLD, HOLD]
    # many overlapping notes take the piano-roll path; it must agree with the step-by-step skyline
    rng = np.random.default_rng(0)
    dense = [(int(p), int(o), 40) for p, o in zip(rng.integers(0, 128, 200), rng.integers(0, 40, 200))]
    assert tokens_to_notes(tokens(dense, 48)) == naive_skyline_notes(dense, 0, 48)
    assert NUM_MELODY_CLASSES == 130 and NOTE_OFF == 128 and HOLD == 129


@pytest.mark.parametrize("notes_per_lane, max_duration", [(12, 6), (300, 60)])  # sparse; dense: piano-roll path
def test_skylines_of_several_voices_match_step_by_step(notes_per_lane, max_duration):
    rng = np.random.default_rng(notes_per_lane)
    lanes, steps = 3, 40
    notes = [(int(rng.integers(0, 128)), int(rng.integers(-2, steps + 2)), int(rng.integers(0, max_duration)), lane)
             for lane in range(lanes) for _ in range(notes_per_lane)]
    pitch, onset, duration, lane = (np.array(column) for column in zip(*notes))
    top, struck = skylines(pitch, onset, duration, lane, lanes, steps)
    assert top.shape == struck.shape == (lanes, steps)
    for index in range(lanes):
        mine = [n for n in notes if n[3] == index]
        for t in range(steps):
            sounding = [n[0] for n in mine if n[1] <= t < n[1] + n[2] and n[1] >= 0]
            expected = max(sounding, default=-1)
            assert top[index, t] == expected, (index, t)
            assert struck[index, t] == any(n[0] == expected and n[1] == t and n[2] > 0 for n in mine)


def test_tokens_to_notes_and_pianoroll():
    assert tokens_to_notes([HOLD, HOLD, 60, HOLD, NOTE_OFF, 62, 62]) == [(60, 2, 2), (62, 5, 1), (62, 6, 1)]
    assert tokens_to_notes([NOTE_OFF, HOLD]) == []
    voices = np.full((2, 6), HOLD, dtype=np.uint8)
    voices[0, [0, 3]] = [72, NOTE_OFF]
    voices[1, [1, 2]] = [48, 50]
    roll = voices_to_pianoroll(voices)
    assert roll.shape == (6, 128) and roll.dtype == bool
    assert sorted(zip(*np.nonzero(roll))) == [(0, 72), (1, 48), (1, 72), (2, 50), (2, 72), (3, 50), (4, 50), (5, 50)]


def test_config_is_validated():
    with pytest.raises(ValueError):
        MidiCorpusConfig(voices=0)
    with pytest.raises(ValueError):
        MidiCorpusConfig(min_qpm=500)
    with pytest.raises(ValueError):
        MidiCorpusConfig(window_hop_bars=3)  # more than window_bars: bars between windows would be lost
    assert MidiCorpusConfig().window_steps == 32


# ----------------------------------------------------------------------------- tests: ingest


def test_every_file_is_accounted_for(corpus):
    spec, report, tables, raw = corpus
    counts = report.counts
    assert counts["seen"] == len(spec["good"]) + len(spec["duplicates"]) + len(spec["bad"])
    assert counts["seen"] == counts["ingested"] + counts["rejected"] + counts["duplicates"]
    assert counts["ingested"] == len(spec["good"])
    assert {d["source_path"]: d["duplicate_of"] for d in report.manifest["duplicates"]} == spec["duplicates"]
    rejected = {r.source_path: (r.stage, r.error_type) for r in report.rejections}
    assert rejected == spec["bad"]
    for r in report.rejections:
        assert len(r.message) > 10, r
    by_path = {r.source_path: r.message for r in report.rejections}
    assert "header-only" in by_path["header_only.mid"]
    assert "not one note" in by_path["no_notes.mid"]
    # pretty_midi writes a tempo/meta track before the 5 instrument tracks
    assert "declares 6 track chunk(s) but the file holds 1" in by_path["truncated_at_chunk.mid"]
    for table in tables.values():
        assert set(table.column("source_path").to_pylist()) <= set(spec["good"])


def test_notes_equal_symusic_quantized(corpus):
    spec, report, tables, raw = corpus
    notes = tables[NOTES_TABLE]
    assert notes.schema.field("pitch").type == "int16" and notes.schema.field("onset_step").type == "int32"
    assert notes.num_rows == sum(len(n) for parts in spec["good"].values() for *_, n in parts)
    for relpath, parts in spec["good"].items():
        rows = rows_of(notes, relpath)
        stored = sorted((r["pitch"], r["onset_step"], r["duration_steps"], r["velocity"], r["program"], r["track"],
                         r["is_drum"]) for r in rows)
        assert stored == quantized_by_symusic(raw / relpath), relpath
        written = sorted((p, o, d, v, program, is_drum) for _, program, is_drum, ns in parts for p, o, d, v in ns)
        assert sorted(row[:5] + row[6:] for row in stored) == written, relpath
    drums = [r for r in rows_of(notes, "quartet_a.mid") if r["is_drum"]]
    assert len(drums) == 16 and {r["pitch"] for r in drums} == {81}


def test_melody_windows_decode_to_the_skyline(corpus):
    spec, report, tables, raw = corpus
    melody = tables[MELODY_TABLE]
    assert tensors_from_table(melody, "tokens").shape == (melody.num_rows, 32)
    total_rows = 0
    for relpath, parts in spec["good"].items():
        notes = pitched_notes(parts)
        piece_steps = max(o + d for _, _, _, ns in parts for _, o, d, _ in ns)
        whole = melody_tokens([n[0] for n in notes], [n[1] for n in notes], [n[2] for n in notes], piece_steps)
        assert tokens_to_notes(whole) == naive_skyline_notes(notes, 0, piece_steps), relpath

        windows, starts = tensors_of(melody, "tokens", relpath)
        expected = {s: naive_skyline_notes(notes, s, WINDOW) for s in expected_starts(piece_steps)}
        expected = {s: ns for s, ns in expected.items() if len(ns) >= CONFIG.min_note_ons_per_window}
        assert starts.tolist() == sorted(expected), relpath
        for tokens, start in zip(windows, starts):
            assert tokens.max() < NUM_MELODY_CLASSES
            assert tokens_to_notes(tokens) == expected[start], (relpath, start)
        assert {r["piece_steps"] for r in rows_of(melody, relpath)} == {piece_steps}
        total_rows += len(windows)
    assert total_rows == melody.num_rows
    # the melody piece: 40 steps padded to 48, so windows at 0 and 16; the second ends in silence
    windows, starts = tensors_of(melody, "tokens", "melody.mid")
    assert starts.tolist() == [0, 16]
    H, OFF = HOLD, NOTE_OFF
    assert windows[0].tolist() == [60, H, H, H, 60, H, H, H, 62, H, OFF, H, 64, H, H, H,
                                   65, H, H, H, H, H, H, H, OFF, H, H, H, 67, H, 72, H]
    assert windows[1].tolist() == [65, H, H, H, H, H, H, H, OFF, H, H, H, 67, H, 72, H,
                                   H, H, H, H, H, H, H, H, OFF, H, H, H, H, H, H, H]


def test_chorale_windows_are_four_voices_soprano_first(corpus):
    spec, report, tables, raw = corpus
    chorales = tables[CHORALE_TABLE]
    voices_all = tensors_from_table(chorales, "voices")
    assert voices_all.shape == (chorales.num_rows, 4, 32) and voices_all.dtype == np.uint8
    assert set(chorales.column("source_path").to_pylist()) == set(spec["chorale_order"])
    for relpath, satb in spec["chorale_order"].items():
        windows, starts = tensors_of(chorales, "voices", relpath)
        piece_steps = max(o + d for part in satb for _, o, d, _ in part)
        assert starts.tolist() == expected_starts(piece_steps), relpath
        for voices, start in zip(windows, starts):
            expected_roll = np.zeros((WINDOW, 128), dtype=bool)
            for v, part in enumerate(satb):
                expected = naive_skyline_notes(part, start, WINDOW)
                assert tokens_to_notes(voices[v]) == expected, (relpath, start, v)
                for pitch, onset, duration in expected:
                    expected_roll[onset : onset + duration, pitch] = True
            assert (voices_to_pianoroll(voices) == expected_roll).all()
    # soprano to bass by mean pitch across the whole table
    mean_pitch = [
        np.mean([p for row in voices_all for p, _, _ in tokens_to_notes(row[v])]) for v in range(4)
    ]
    assert mean_pitch == sorted(mean_pitch, reverse=True)


def test_reingest_reuses_the_manifest(corpus):
    spec, report, tables, raw = corpus
    again = ingest(MIDI, CONFIG, raw, report.manifest_path.parent, IngestSettings(workers=2))
    assert again.reused and again.version == report.version


# ----------------------------------------------------------------------------- tests: bars


def decoded(folder: Path, name: str, parts, config=CONFIG, **midi):
    """A MIDI file written into `folder` and decoded as the ingest's workers do."""
    path = folder / name
    path.write_bytes(midi_bytes(parts, **midi))
    return decode(DecodeTask(str(path), name, config))


def quartet(soprano, drops=(0, 5, 12, 24)):
    """Four parts moving with the soprano, `drops` semitones below it."""
    return [(name, 0, False, [(p - drop, o, d, v) for p, o, d, v in soprano]) for name, drop in zip("SATB", drops)]


def delayed(notes, steps):
    return [(p, o + steps, d, v) for p, o, d, v in notes]


# a one-beat pickup (G4 at step 0) and three 4/4 bars
TUNE = [(67, 0, 4, 90), (72, 4, 4, 90), (71, 8, 4, 90), (69, 12, 8, 90), (67, 20, 8, 90), (65, 28, 8, 90),
        (64, 36, 16, 90)]


def test_windows_start_on_downbeats_after_a_pickup(tmp_path):
    # as a DAW writes a pickup: 4/4 from the start, and three beats of rest before it
    rest_first = decoded(tmp_path, "rest_first.mid", quartet(delayed(TUNE, 12)))
    # as a pickup time signature: a 1/4 bar, then 4/4 (its downbeats at steps 4, 20, 36)
    pickup_bar = decoded(tmp_path, "pickup_bar.mid", quartet(TUNE), time_signatures=[(1, 4, 0), (4, 4, 4)])
    expected_starts_of = {"rest_first": [0, 16, 32], "pickup_bar": [-12, 4, 20]}  # 4 bars, padded: 3 windows
    for name, result in (("rest_first", rest_first), ("pickup_bar", pickup_bar)):
        assert result.notices == []
        for table in (MELODY_TABLE, CHORALE_TABLE):
            assert result.tables[table].columns["start_step"].tolist() == expected_starts_of[name], (name, table)
        melody = result.tables[MELODY_TABLE].tensors
        # the pickup sounds on the first window's fourth beat, the first downbeat opens the second window
        assert tokens_to_notes(melody[0]) == [(67, 12, 4), (72, 16, 4), (71, 20, 4), (69, 24, 8)]
        assert melody[1][0] == 72 and melody[2][0] == 67
        chorale = result.tables[CHORALE_TABLE].tensors
        assert [tokens_to_notes(voice)[0] for voice in chorale[0]] == [(67 - drop, 12, 4) for drop in (0, 5, 12, 24)]
    # the same music in the same windows, only counted from another step 0
    assert (rest_first.tables[MELODY_TABLE].tensors == pickup_bar.tables[MELODY_TABLE].tensors).all()
    assert (rest_first.tables[CHORALE_TABLE].tensors == pickup_bar.tables[CHORALE_TABLE].tensors).all()


def test_window_hop_and_padding_count_bars(tmp_path):
    every_other_bar = MidiCorpusConfig(window_hop_bars=2)
    result = decoded(tmp_path, "hop.mid", quartet(TUNE), every_other_bar, time_signatures=[(1, 4, 0), (4, 4, 4)])
    assert result.tables[MELODY_TABLE].columns["start_step"].tolist() == [-12, 20]
    # 2.5 bars: padded, the half bar ends a window; unpadded, only whole bars are windowed
    half_bar_more = quartet(delayed(TUNE[:5], 12))  # steps 12..40
    assert decoded(tmp_path, "padded.mid", half_bar_more).tables[MELODY_TABLE].columns["start_step"].tolist() == [0, 16]
    unpadded = decoded(tmp_path, "unpadded.mid", half_bar_more, MidiCorpusConfig(pad_final_window=False))
    assert unpadded.tables[MELODY_TABLE].columns["start_step"].tolist() == [0]


def test_a_piece_in_another_metre_keeps_its_notes_but_has_no_windows(tmp_path):
    rng = np.random.default_rng(5)
    waltz = quartet(line(rng, 67, 79, 48))  # 4 bars of 3/4
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "waltz.mid").write_bytes(midi_bytes(waltz, time_signatures=[(3, 4, 0)]))
    report = ingest(MIDI, CONFIG, raw, tmp_path / "out", IngestSettings(workers=1))
    assert report.counts["ingested"] == 1
    assert read_shards(report.shard_paths(NOTES_TABLE)).num_rows == sum(len(notes) for *_, notes in waltz)
    assert read_shards(report.shard_paths(MELODY_TABLE)).num_rows == 0
    assert read_shards(report.shard_paths(CHORALE_TABLE)).num_rows == 0

    result = decoded(tmp_path, "waltz.mid", waltz, time_signatures=[(3, 4, 0)])
    [notice] = result.notices
    assert (notice.stage, notice.kind) == ("window", "UnsupportedMeter")
    assert notice.message.startswith("3/4 throughout (4 bars left out)") and "4 quarters per bar" in notice.message
    assert len(result.signatures[MELODY_TABLE]) == len(result.signatures[CHORALE_TABLE]) == 0


def test_only_the_bars_of_another_metre_are_left_out(tmp_path):
    rng = np.random.default_rng(6)
    # 2 bars of 4/4 (steps 0-32), 2 of 3/4 (32-56), 2 of 4/4 (56-88)
    piece = quartet(line(rng, 67, 79, 88, durations=(4,)))
    result = decoded(tmp_path, "mixed.mid", piece, time_signatures=[(4, 4, 0), (3, 4, 32), (4, 4, 56)])
    assert result.tables[MELODY_TABLE].columns["start_step"].tolist() == [0, 56]
    assert result.tables[CHORALE_TABLE].columns["start_step"].tolist() == [0, 56]
    [notice] = result.notices
    assert notice.message.startswith("3/4 for 2 bars left out (2 of 6 bars)")


# ----------------------------------------------------------------------------- tests: keys for the held-out split


def shifted(parts, semitones):
    return [(name, program, is_drum, [(p + semitones, o, d, v) for p, o, d, v in notes])
            for name, program, is_drum, notes in parts]


def satb(rng, steps, soprano=None):
    soprano = soprano if soprano is not None else line(rng, 67, 79, steps)
    lower = [line(rng, low, high, steps) for low, high in ((58, 66), (50, 57), (36, 49))]  # always below it
    return [(name, 0, False, notes) for name, notes in zip("SATB", [soprano, *lower])]


def test_window_keys_are_equal_exactly_up_to_transposition(tmp_path):
    rng = np.random.default_rng(11)
    piece = satb(rng, 64)
    original = decoded(tmp_path, "a.mid", piece)
    up, down = decoded(tmp_path, "a_up.mid", shifted(piece, 5)), decoded(tmp_path, "a_down.mid", shifted(piece, -7))
    other = decoded(tmp_path, "b.mid", satb(rng, 64))
    first_note = piece[0][3][0]
    touched = [(piece[0][0], 0, False, [(first_note[0] + 1, *first_note[1:]), *piece[0][3][1:]]), *piece[1:]]
    one_note_changed = decoded(tmp_path, "a_changed.mid", touched)
    for table in (MELODY_TABLE, CHORALE_TABLE):
        keys = original.signatures[table]
        assert keys.dtype == np.uint64 and len(keys) == len(original.tables[table]) == 3, table
        assert keys.tolist() == up.signatures[table].tolist() == down.signatures[table].tolist(), table
        assert len(set(keys.tolist())) == len(keys), table  # the piece's windows differ from each other
        assert not set(keys.tolist()) & set(other.signatures[table].tolist()), table
        # the first soprano note is only in the first window
        changed = one_note_changed.signatures[table]
        assert changed[0] != keys[0] and changed[1:].tolist() == keys[1:].tolist(), table


def test_work_keys_find_a_tune_in_another_key_and_harmonisation(tmp_path):
    def share(a, b):
        a, b = set(a.work_keys.tolist()), set(b.work_keys.tolist())
        return len(a & b) / min(len(a), len(b))

    rng = np.random.default_rng(13)
    tune = line(rng, 67, 79, 256, rest_chance=0.05)  # where the tune rests, the alto is the top voice
    original = decoded(tmp_path, "tune.mid", satb(rng, 256, tune))
    again = decoded(tmp_path, "tune_again.mid", shifted(satb(rng, 256, tune), -3))  # new lower voices, down 3
    other = decoded(tmp_path, "other.mid", satb(rng, 256))
    assert original.work_keys.dtype == np.uint64 and len(original.work_keys) > 30
    assert len(np.unique(original.work_keys)) == len(original.work_keys)
    assert 0.4 <= share(original, again) < 1.0
    assert share(original, other) < 0.1


def random_piece(rng, index):
    """Parts and time signatures of a random piece: pickups, metre changes, drums, chords, few voices."""
    total = int(rng.integers(4, 160))
    parts = []
    for number in range(int(rng.integers(1, 7))):
        is_drum = bool(rng.random() < 0.15)
        if rng.random() < 0.3:  # chords and overlaps
            notes = [(int(rng.integers(1, 128)), int(o), int(rng.integers(1, 24)), 80)
                     for o in rng.integers(0, total, int(rng.integers(1, 60)))]
        else:
            notes = line(rng, int(rng.integers(30, 70)), int(rng.integers(70, 100)), total, rest_chance=0.2)
        parts.append((f"p{number}", int(rng.integers(0, 128)), is_drum, notes))
    metres = [(), ((1, 4, 0), (4, 4, 4)), ((4, 4, 0), (3, 4, 32), (4, 4, 68)), ((3, 4, 0),),
              ((2, 2, 0), (4, 4, 48), (6, 8, 120)), ((3, 8, 0), (4, 4, 6))]
    return parts, metres[index % len(metres)]


@pytest.mark.parametrize("config", [
    CONFIG,
    MidiCorpusConfig(window_bars=4, window_hop_bars=2, pad_final_window=False, min_note_ons_per_window=5),
    MidiCorpusConfig(steps_per_quarter=2, quarters_per_bar=3, voices=3, min_sounding_voices_per_window=2),
])
def test_one_pass_windows_equal_the_per_table_builders(tmp_path, config):
    """decode builds melody and chorale windows, their keys and the work keys in one pass
    (`piece_windows`); they must be exactly what the per-table builders give."""
    from corpora.midi import (
        bar_grid,
        chorale_rows,
        melody_rows,
        parse_midi,
        skyline,
        time_signatures,
        validated_notes,
        window_starts,
        work_keys,
    )

    rng = np.random.default_rng(17)
    compared = 0
    for index in range(60):
        parts, metre = random_piece(rng, index)
        data = midi_bytes(parts, qpm=float(rng.choice([60, 120, 133.3])), time_signatures=metre)
        score = parse_midi(data)
        notes = validated_notes(data, score, config)
        starts = window_starts(bar_grid(time_signatures(score, config), notes.total_steps, config), config)
        pitched = notes.take(~notes.is_drum)
        top, struck = skyline(pitched.pitch, pitched.onset_step, pitched.duration_steps, notes.total_steps)
        expected_melody, expected_melody_keys = melody_rows(top, struck, starts, notes.total_steps, config)
        expected_chorale, expected_chorale_keys = chorale_rows(notes, starts, config)
        melody, melody_keys, chorale, chorale_keys, keys = piece_windows(notes, starts, config)
        for got, expected in ((melody, expected_melody), (chorale, expected_chorale)):
            assert got.tensors.dtype == expected.tensors.dtype == np.uint8
            np.testing.assert_array_equal(got.tensors, expected.tensors)
            assert {name: list(values) for name, values in got.columns.items()} == \
                {name: list(values) for name, values in expected.columns.items()}
        np.testing.assert_array_equal(melody_keys, expected_melody_keys)
        np.testing.assert_array_equal(chorale_keys, expected_chorale_keys)
        np.testing.assert_array_equal(keys, work_keys(top, struck))
        compared += len(expected_melody) + len(expected_chorale) > 0
    assert compared >= 15


def test_default_corpus_three_chorales(tmp_path):
    from corpora.defaults.midi import write_default_corpus

    raw = tmp_path / "raw"
    assert write_default_corpus(raw, limit=3) == 3
    files = sorted(p.name for p in raw.iterdir())
    assert files == ["bwv153.1.mid", "bwv269.mid", "bwv347.mid"]
    report = ingest(MIDI, CONFIG, raw, tmp_path / "out", IngestSettings(workers=2))
    assert report.counts["ingested"] == 3 and report.counts["rejected"] == 0
    chorales = read_shards(report.shard_paths(CHORALE_TABLE))
    # bwv269 is in 3/4: its notes are ingested, but it has no windows
    assert set(chorales.column("source_path").to_pylist()) == {"bwv153.1.mid", "bwv347.mid"}
    voices = tensors_from_table(chorales, "voices")
    assert len(voices) >= 2 * 10  # each chorale is 12+ bars long
    for relpath in ("bwv153.1.mid", "bwv347.mid"):  # both open with a one-beat pickup, in the first window
        windows, starts = tensors_of(chorales, "voices", relpath)
        assert starts.tolist()[:3] == [0, 16, 32]
        assert all(tokens_to_notes(voice)[0][1] == 12 for voice in windows[0])
    # a chorale's soprano sits above its bass in every window where both sound
    pitches = lambda row: [p for p, _, _ in tokens_to_notes(row)]  # noqa: E731
    assert all(np.mean(pitches(v[0])) > np.mean(pitches(v[3])) for v in voices if pitches(v[0]) and pitches(v[3]))
    melody = read_shards(report.shard_paths(MELODY_TABLE))
    assert melody.num_rows >= len(voices)
    notes = read_shards(report.shard_paths(NOTES_TABLE))
    assert notes.num_rows > 3 * 150 and not any(notes.column("is_drum").to_pylist())
    assert "bwv269.mid" in set(notes.column("source_path").to_pylist())


def test_exported_chorale_has_its_bar_lines_where_the_music_has_them(tmp_path):
    from corpora.defaults.midi import export_chorale

    # bwv347 opens with a one-beat pickup, and its first section is repeated
    assert export_chorale("bach/bwv347", str(tmp_path)) == ("bach/bwv347", "bwv347.mid", None)
    score = symusic.Score(str(tmp_path / "bwv347.mid"))
    quarter = score.ticks_per_quarter
    voices = [track for track in score.tracks if track.notes]
    assert len(voices) == 4
    assert {track.notes[0].time for track in voices} == {3 * quarter}  # three beats of silence, then the pickup
    assert {note.time for track in voices for note in track.notes} >= {4 * quarter}  # every voice on the downbeat
    # one 4/4 from the start; music21's restatement where the repeat starts again (a beat before a downbeat) is gone
    assert [(ts.time, ts.numerator, ts.denominator) for ts in score.time_signatures] == [(0, 4, 4)]
    assert score.tempos[0].time == 0


def test_bar_lines_follow_the_measures():
    from music21 import meter, note, stream

    from corpora.defaults.midi import bar_lines

    def score(*measures):
        """measures: (quarters of music, music21's paddingLeft) each, under 4/4."""
        part, offset = stream.Part(), 0.0
        for number, (quarters, padding) in enumerate(measures):
            measure = stream.Measure(number=number)
            if number == 0:
                measure.insert(0, meter.TimeSignature("4/4"))
            measure.append(note.Note("C4", quarterLength=quarters))
            measure.paddingLeft = padding
            part.insert(offset, measure)
            offset += quarters
        whole = stream.Score()
        whole.insert(0, part)
        return whole

    def lines(*measures):
        bars = bar_lines(score(*measures))
        return float(bars.leading_rest), [(float(at), n, d) for at, n, d in bars.signatures]

    assert lines((1, 3), (4, 0), (4, 0), (3, 0)) == (3.0, [(0.0, 4, 4)])  # a pickup; the last bar ends early
    assert lines((4, 0), (3, 0), (4, 0), (4, 0)) == (0.0, [(0.0, 4, 4), (4.0, 3, 4), (7.0, 4, 4)])  # cut short
    assert lines((4, 0), (1.5, 0), (4, 0)) == (0.0, [(0.0, 4, 4), (4.0, 3, 8), (5.5, 4, 4)])
    assert lines((4, 0), (6, 0), (4, 0)) == (0.0, [(0.0, 4, 4), (4.0, 6, 4), (10.0, 4, 4)])  # overfull
    # a repeat played again after a pickup: the pickup's copy ends the bar its first ending began
    assert lines((1, 3), (4, 0), (3, 0), (1, 3), (4, 0), (3, 0)) == (3.0, [(0.0, 4, 4)])
    # a bar split in two measures (a repeat sign between them), played straight on
    assert lines((1, 3), (4, 0), (3, 0), (1, 0), (4, 0)) == (3.0, [(0.0, 4, 4)])


def test_default_corpus_skips_what_music21_cannot_export(tmp_path, monkeypatch, caplog):
    import corpora.defaults.midi as default_midi

    # bwv277 has repeat marks music21 cannot expand: it is exported without its repeats
    monkeypatch.setattr(default_midi, "chorale_names", lambda: ["bach/no-such-chorale", "bach/bwv277"])
    assert default_midi.write_default_corpus(tmp_path, workers=1) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["bwv277.mid"]
    assert "skipping chorale bach/no-such-chorale" in caplog.text
    assert symusic.Score(str(tmp_path / "bwv277.mid")).note_num() > 200
