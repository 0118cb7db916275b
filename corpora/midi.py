"""MIDI corpora: every .mid/.midi file becomes notes, melody windows and 4-voice chorale windows.

Parsing is symusic's (native, ~150x faster than pretty_midi/mido; see
shared/research/ecosystem.md section 1). symusic is lenient: it accepts header-only files,
a header that promises more tracks than the file holds, a division of 0, absurd tempos and
deltas of hours. So every file is validated after parsing, and each problem becomes a
`Rejected` with its own error type.

Three tables, all on a grid of `steps_per_quarter` steps per quarter note (16ths by default):

- `notes`: one row per note of the piece (drums included), piece-local step times.
- `melody_windows`: the top voice (skyline: the highest sounding non-drum note at each step)
  as MusicVAE melody tokens, cut into windows of `window_bars` bars.
- `chorale_windows`: four voices (the non-drum tracks with the most notes, soprano to bass),
  each made monophonic and tokenized the same way, cut into the same windows.

Melody tokens (130 classes, as MusicVAE): 0..127 = note-on of that pitch, NOTE_OFF = 128,
HOLD = 129 (no event: the sounding note goes on, or the silence does). A window is
self-contained: a note already sounding at its first step is struck again there.
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import symusic

from corpora.ingest import DecodedFile, DecodeTask, Modality, Rejected, TableRows
from corpora.shards import TableSpec, TensorColumn

EXTENSIONS = frozenset({".mid", ".midi"})
NOTES_TABLE = "notes"
MELODY_TABLE = "melody_windows"
CHORALE_TABLE = "chorale_windows"

NUM_PITCHES = 128
NOTE_OFF = 128
HOLD = 129
NUM_MELODY_CLASSES = 130

# MIDI itself, not thresholds: the file layout and the 7-bit data range.
_HEADER = struct.Struct(">4sIHHH")  # b"MThd", header length, format, declared tracks, division
_CHUNK = struct.Struct(">4sI")  # chunk id, chunk length
_MIDI_DATA_MAX = 127
_DEFAULT_MSPQ = 500_000  # 120 qpm, the tempo a MIDI file has until it says otherwise
_MICROSECONDS_PER_MINUTE = 60_000_000


@dataclass(frozen=True)
class MidiCorpusConfig:
    """How MIDI files become rows; every threshold a file is judged by is named here."""

    steps_per_quarter: int = 4  # 16th-note steps
    quarters_per_bar: int = 4  # windows assume 4/4, as MusicVAE does: 2 bars = 32 steps
    window_bars: int = 2
    window_hop_steps: int = 16  # one bar
    pad_final_window: bool = True  # pad the end with silence to a whole hop so the ending is kept
    voices: int = 4
    min_note_ons_per_window: int = 2  # fewer note-ons (all voices together, for chorales): window skipped
    min_sounding_voices_per_window: int = 4  # a chorale window needs this many voices to sound in it
    min_duration_steps: int = 1  # a note whose quantized end meets its onset is kept this long
    # validation: a file outside these is rejected
    max_file_bytes: int = 32 << 20
    min_qpm: float = 20.0
    max_qpm: float = 400.0
    max_duration_s: float = 2 * 60 * 60
    max_notes: int = 1_000_000
    max_tracks: int = 1024  # at most 32767: the track column is int16
    lowest_pitch: int = 0  # allowed pitch range, inclusive (MIDI allows 0..127; narrow it to be stricter)
    highest_pitch: int = 127
    min_velocity: int = 1  # a note-on of velocity 0 is a note-off, so a stored note has >= 1
    max_velocity: int = 127

    def __post_init__(self):
        positive = ("steps_per_quarter", "quarters_per_bar", "window_bars", "window_hop_steps", "voices",
                    "min_duration_steps", "max_file_bytes", "max_notes", "max_tracks")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0 <= self.lowest_pitch <= self.highest_pitch <= _MIDI_DATA_MAX:
            raise ValueError(f"pitch range {self.lowest_pitch}..{self.highest_pitch} is not inside 0..127")
        if not 0 < self.min_velocity <= self.max_velocity <= _MIDI_DATA_MAX:
            raise ValueError(f"velocity range {self.min_velocity}..{self.max_velocity} is not inside 1..127")
        if not 0 < self.min_qpm < self.max_qpm:
            raise ValueError(f"tempo range {self.min_qpm}..{self.max_qpm} qpm is not increasing and positive")
        if self.max_duration_s <= 0:
            raise ValueError(f"max_duration_s must be positive, not {self.max_duration_s}")
        if self.max_tracks > np.iinfo(np.int16).max:
            raise ValueError(f"max_tracks must fit the int16 track column, not {self.max_tracks}")
        if not 0 <= self.min_sounding_voices_per_window <= self.voices:
            raise ValueError(f"min_sounding_voices_per_window must be within 0..voices ({self.voices})")
        if self.window_hop_steps > self.window_steps:
            raise ValueError(f"window_hop_steps {self.window_hop_steps} > window length {self.window_steps}")

    @property
    def window_steps(self) -> int:
        return self.window_bars * self.quarters_per_bar * self.steps_per_quarter


def table_specs(config: MidiCorpusConfig) -> list[TableSpec]:
    steps = config.window_steps
    return [
        TableSpec(
            NOTES_TABLE,
            None,
            {
                "pitch": pa.int16(),
                "onset_step": pa.int32(),
                "duration_steps": pa.int32(),
                "velocity": pa.int16(),
                "program": pa.int16(),
                "track": pa.int16(),
                "is_drum": pa.bool_(),
            },
        ),
        TableSpec(
            MELODY_TABLE,
            TensorColumn("tokens", (steps,), "uint8"),
            {"start_step": pa.int32(), "piece_steps": pa.int32()},
        ),
        TableSpec(
            CHORALE_TABLE,
            TensorColumn("voices", (config.voices, steps), "uint8"),
            {"start_step": pa.int32()},
        ),
    ]


# --------------------------------------------------------------------------- tokens


def skyline(pitch, onset_step, duration_steps, total_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The top voice of a set of notes, per step.

    Returns `top` (total_steps,) int16: the highest sounding pitch at each step, -1 in silence;
    and `struck` (total_steps,) bool: a note of that top pitch starts at that step (so a
    repeated note is a new note, not a continuation). Notes are clipped to 0..total_steps.
    """
    pitch = np.asarray(pitch, dtype=np.int64)
    top, struck = skylines(pitch, onset_step, duration_steps, np.zeros(len(pitch), np.int64), 1, total_steps)
    return top[0], struck[0]


def skylines(pitch, onset_step, duration_steps, lane, lanes: int, total_steps: int):
    """`skyline` of several independent voices at once: note i belongs to voice lane[i].

    Returns top and struck shaped (lanes, total_steps).
    """
    pitch = np.asarray(pitch, dtype=np.int64)
    onset = np.asarray(onset_step, dtype=np.int64)
    lane = np.asarray(lane, dtype=np.int64)
    total_steps = max(int(total_steps), 0)
    end = np.minimum(onset + np.asarray(duration_steps, dtype=np.int64), total_steps)
    keep = (onset >= 0) & (end > onset)
    pitch, onset, end, lane = pitch[keep], onset[keep], end[keep], lane[keep]
    if len(pitch) and (pitch.min() < 0 or pitch.max() >= NUM_PITCHES):
        raise ValueError(f"pitches must be within 0..{NUM_PITCHES - 1}")
    length = end - onset
    top = np.full((lanes, total_steps), -1, dtype=np.int16)
    if int(length.sum()) <= _EXPANSION_LIMIT * lanes * total_steps:
        # one entry per (note, step it sounds at), then the maximum pitch per lane and step
        first_of_note = np.cumsum(length) - length
        steps = np.repeat(onset - first_of_note + lane * total_steps, length) + np.arange(int(length.sum()))
        np.maximum.at(top.reshape(-1), steps, np.repeat(pitch, length).astype(np.int16))
    else:  # heavily overlapping notes: a piano roll per lane bounds the memory
        for index in range(lanes):
            mine = lane == index
            top[index] = _top_by_pianoroll(pitch[mine], onset[mine], end[mine], total_steps)
    struck = np.zeros((lanes, total_steps), dtype=bool)
    hit = top[lane, onset] == pitch
    struck[lane[hit], onset[hit]] = True
    return top, struck


# More sounding note-steps than this many per step and lane take the piano-roll path, whose
# memory is bounded by the piece length (speed only: both paths give the same result).
_EXPANSION_LIMIT = 16


def _top_by_pianoroll(pitch, onset, end, total_steps: int) -> np.ndarray:
    # +1 where a note starts, -1 where it ends; the running sum counts notes sounding per pitch
    delta = np.zeros((NUM_PITCHES, total_steps + 1), dtype=np.int32)
    np.add.at(delta, (pitch, onset), 1)
    np.add.at(delta, (pitch, end), -1)
    sounding = np.cumsum(delta[:, :-1], axis=1, dtype=np.int32) > 0
    from_top = sounding[::-1]
    return np.where(from_top.any(axis=0), NUM_PITCHES - 1 - from_top.argmax(axis=0), -1).astype(np.int16)


def tokens_from_skyline(top: np.ndarray, struck: np.ndarray) -> np.ndarray:
    """Melody tokens for a per-step top pitch (-1 = silence) and its note starts (last axis = steps)."""
    previous = np.concatenate((np.full((*top.shape[:-1], 1), -1, np.int16), top[..., :-1]), axis=-1)
    tokens = np.full(top.shape, HOLD, dtype=np.uint8)
    note_on = (top >= 0) & ((top != previous) | struck)
    tokens[note_on] = top[note_on]
    tokens[(top < 0) & (previous >= 0)] = NOTE_OFF
    return tokens


def melody_tokens(pitch, onset_step, duration_steps, total_steps: int) -> np.ndarray:
    """130-class melody tokens (uint8, length total_steps) of the skyline of the given notes.

    The notes are parallel sequences (pitch 0..127, onset step, duration in steps); at each
    step the highest sounding note is the melody. Inverse: `tokens_to_notes`.
    """
    top, struck = skyline(pitch, onset_step, duration_steps, total_steps)
    return tokens_from_skyline(top, struck)


def tokens_to_notes(tokens) -> list[tuple[int, int, int]]:
    """(pitch, onset_step, duration_steps) for each note-on of a melody token sequence.

    A note lasts until the next note-on or NOTE_OFF, or to the end of the sequence; leading
    HOLDs are silence.
    """
    tokens = np.asarray(tokens)
    events = np.flatnonzero(tokens != HOLD)
    ends = np.append(events[1:], len(tokens))
    return [
        (int(tokens[start]), int(start), int(end - start))
        for start, end in zip(events, ends)
        if tokens[start] < NUM_PITCHES
    ]


def tokens_to_pitches(tokens) -> np.ndarray:
    """The sounding pitch at each step (-1 in silence) of token sequences of any leading shape."""
    tokens = np.asarray(tokens)
    steps = tokens.shape[-1]
    is_event = tokens != HOLD
    index = np.where(is_event, np.arange(steps), -1)
    last_event = np.maximum.accumulate(index, axis=-1)  # the latest event at or before each step
    state = np.take_along_axis(tokens.astype(np.int16), np.maximum(last_event, 0), axis=-1)
    return np.where((last_event >= 0) & (state < NUM_PITCHES), state, -1).astype(np.int16)


def voices_to_pianoroll(voices) -> np.ndarray:
    """(steps, 128) bool piano roll of token sequences shaped (voices, steps) or (steps,)."""
    pitches = tokens_to_pitches(np.atleast_2d(voices))
    roll = np.zeros((pitches.shape[-1], NUM_PITCHES), dtype=bool)
    voice, step = np.nonzero(pitches >= 0)
    roll[step, pitches[voice, step]] = True
    return roll


# --------------------------------------------------------------------------- parse and validate


@dataclass
class PieceNotes:
    """All notes of one piece on the step grid, one entry per note (parallel arrays)."""

    pitch: np.ndarray
    onset_step: np.ndarray
    duration_steps: np.ndarray
    velocity: np.ndarray
    program: np.ndarray
    track: np.ndarray
    is_drum: np.ndarray

    @property
    def total_steps(self) -> int:
        return int((self.onset_step + self.duration_steps).max()) if len(self.pitch) else 0

    def take(self, mask) -> "PieceNotes":
        return PieceNotes(*(getattr(self, name)[mask] for name in _NOTE_FIELDS))


_NOTE_FIELDS = ("pitch", "onset_step", "duration_steps", "velocity", "program", "track", "is_drum")


def parse_midi(data: bytes) -> symusic.Score:
    try:
        return symusic.Score.from_midi(data)
    except Exception as exc:  # noqa: BLE001 - symusic raises RuntimeError for every malformed file
        message = str(exc).replace(": iostream error", "")
        raise Rejected(f"not a readable MIDI file: {message}", "parse", "MidiParseError") from exc


def track_chunks(data: bytes) -> tuple[int, int]:
    """(tracks the header declares, MTrk chunks the file actually holds)."""
    _, header_length, _, declared, _ = _HEADER.unpack_from(data, 0)
    position, found = 8 + header_length, 0
    while position + _CHUNK.size <= len(data):
        chunk_id, length = _CHUNK.unpack_from(data, position)
        position += _CHUNK.size + length
        if position > len(data):
            break  # a chunk cut short
        found += chunk_id == b"MTrk"
    return declared, found


def seconds_at(tick: int, tempo_ticks: np.ndarray, mspq: np.ndarray, tpq: int) -> float:
    """Wall-clock time of `tick` under a tempo map (tempo change ticks and microseconds per quarter)."""
    order = np.argsort(tempo_ticks, kind="stable")
    ticks, mspq = tempo_ticks[order].astype(np.float64), mspq[order].astype(np.float64)
    if len(ticks) == 0 or ticks[0] > 0:
        ticks, mspq = np.concatenate(([0.0], ticks)), np.concatenate(([_DEFAULT_MSPQ], mspq))
    segment_end = np.minimum(np.append(ticks[1:], np.inf), tick)
    lengths = np.clip(segment_end - ticks, 0, None)
    return float((lengths * mspq).sum() / tpq / 1e6)


def _check_range(values: np.ndarray, low: int, high: int, what: str, error_type: str) -> None:
    if len(values) and (values.min() < low or values.max() > high):
        raise Rejected(
            f"{what} out of range {low}..{high}: found {int(values.min())}..{int(values.max())}",
            "validate",
            error_type,
        )


def validated_notes(data: bytes, score: symusic.Score, config: MidiCorpusConfig) -> PieceNotes:
    """Check a parsed score against the config and return its notes quantized to steps."""
    tpq = score.ticks_per_quarter
    if tpq <= 0:
        raise Rejected(f"the header's division is {tpq} ticks per quarter", "validate", "InvalidDivision")
    declared, found = track_chunks(data)
    if found < declared:
        raise Rejected(
            f"the header declares {declared} track chunk(s) but the file holds {found}: truncated or corrupt",
            "validate",
            "MissingTracks",
        )
    if found == 0:
        raise Rejected("header-only MIDI: a valid MThd header but no track chunks", "validate", "NoTracks")
    if len(score.tracks) > config.max_tracks:
        raise Rejected(f"{len(score.tracks)} tracks, above the limit of {config.max_tracks}", "validate", "TooManyTracks")
    note_count = sum(track.note_num() for track in score.tracks)
    if note_count == 0:
        raise Rejected(
            f"the file has {found} track chunk(s) but not one note (a note-on with its note-off)",
            "validate",
            "NoNotes",
        )
    if note_count > config.max_notes:
        raise Rejected(f"{note_count:,} notes, above the limit of {config.max_notes:,}", "validate", "TooManyNotes")

    tempos = score.tempos.numpy()
    tempo_ticks, mspq = tempos["time"].astype(np.int64), tempos["mspq"].astype(np.int64)
    if len(mspq):
        if mspq.min() <= 0:
            raise Rejected("a tempo event of 0 microseconds per quarter", "validate", "ImplausibleTempo")
        qpm = _MICROSECONDS_PER_MINUTE / mspq
        if qpm.min() < config.min_qpm or qpm.max() > config.max_qpm:
            raise Rejected(
                f"tempo {qpm.min():.4g}..{qpm.max():.4g} qpm is outside {config.min_qpm:g}..{config.max_qpm:g}",
                "validate",
                "ImplausibleTempo",
            )

    columns: dict[str, list[np.ndarray]] = {name: [] for name in _NOTE_FIELDS}
    for index, track in enumerate(score.tracks):
        count = track.note_num()
        if count == 0:
            continue
        notes = track.notes.numpy()
        columns["pitch"].append(notes["pitch"].astype(np.int16))
        columns["onset_step"].append(notes["time"].astype(np.int64))
        columns["duration_steps"].append(notes["duration"].astype(np.int64))  # in ticks until quantized
        columns["velocity"].append(notes["velocity"].astype(np.int16))
        columns["program"].append(np.full(count, track.program, dtype=np.int16))
        columns["track"].append(np.full(count, index, dtype=np.int16))
        columns["is_drum"].append(np.full(count, track.is_drum, dtype=bool))
    notes = PieceNotes(*(np.concatenate(columns[name]) for name in _NOTE_FIELDS))

    start, length = notes.onset_step, notes.duration_steps
    if start.min() < 0 or length.min() < 0:
        raise Rejected("a note with a negative time or duration", "validate", "NegativeTime")
    _check_range(notes.pitch, config.lowest_pitch, config.highest_pitch, "pitch", "PitchOutOfRange")
    _check_range(notes.velocity, config.min_velocity, config.max_velocity, "velocity", "VelocityOutOfRange")
    _check_range(notes.program, 0, _MIDI_DATA_MAX, "program", "ProgramOutOfRange")
    end_tick = int((start + length).max())
    duration_s = seconds_at(end_tick, tempo_ticks, mspq, tpq)
    if duration_s > config.max_duration_s:
        raise Rejected(
            f"the last note ends after {duration_s:,.0f} s, above the limit of {config.max_duration_s:,.0f} s",
            "validate",
            "ImplausibleDuration",
        )
    return quantize(notes, tpq, config)


def quantize(notes: PieceNotes, tpq: int, config: MidiCorpusConfig) -> PieceNotes:
    """Notes in ticks -> notes in steps: onset and end each rounded to the nearest step (half up).

    symusic's `resample` rounds onset and duration instead, which can open a gap between
    notes that touch in ticks; rounding the end keeps them touching on the grid. A note is
    at least `min_duration_steps` long.
    Sorted by onset, then pitch, then track.
    """
    spq = config.steps_per_quarter
    start = notes.onset_step.astype(np.int64)
    end = start + notes.duration_steps.astype(np.int64)
    onset = (2 * start * spq + tpq) // (2 * tpq)
    end_step = (2 * end * spq + tpq) // (2 * tpq)
    duration = np.maximum(end_step - onset, config.min_duration_steps)
    order = np.lexsort((notes.track, notes.pitch, onset))
    quantized = PieceNotes(
        pitch=notes.pitch,
        onset_step=onset.astype(np.int32),
        duration_steps=duration.astype(np.int32),
        velocity=notes.velocity,
        program=notes.program,
        track=notes.track,
        is_drum=notes.is_drum,
    )
    return quantized.take(order)


def content_hash(notes: PieceNotes) -> str:
    """Hash of the quantized music itself: the same notes saved twice (other tempo, other
    track order, other file layout) hash the same."""
    content = np.stack(
        [notes.onset_step, notes.pitch, notes.duration_steps, notes.velocity, notes.program, notes.is_drum]
    ).astype(np.int64)
    content = content[:, np.lexsort(content[::-1])]
    return hashlib.sha256(content.tobytes()).hexdigest()


# --------------------------------------------------------------------------- windows


def window_starts(total_steps: int, config: MidiCorpusConfig) -> tuple[np.ndarray, int]:
    """Window start steps and the (padded) length of the token sequence they are cut from."""
    hop, window = config.window_hop_steps, config.window_steps
    if config.pad_final_window:
        padded = max(window, -(-total_steps // hop) * hop)
    else:
        padded = total_steps
    if padded < window:
        return np.empty(0, dtype=np.int64), padded
    return np.arange(0, padded - window + 1, hop, dtype=np.int64), padded


def windowed_tokens(top: np.ndarray, struck: np.ndarray, starts: np.ndarray, window: int):
    """Tokens (len(starts), *lanes, window) and whether anything sounds (len(starts), *lanes).

    `top` and `struck` are (*lanes, steps); a note sounding at a window's first step is struck there.
    """
    tokens = tokens_from_skyline(top, struck)
    index = starts[:, None] + np.arange(window)
    windows = np.moveaxis(tokens[..., index], -2, 0)  # (windows, *lanes, window)
    first = np.moveaxis(top[..., starts], -1, 0)
    windows[..., 0] = np.where(first >= 0, first, HOLD)
    sounding = np.moveaxis((top[..., index] >= 0).any(axis=-1), -1, 0)
    return windows, sounding


def note_ons(tokens: np.ndarray) -> np.ndarray:
    return (tokens < NUM_PITCHES).sum(axis=-1)


def melody_rows(notes: PieceNotes, config: MidiCorpusConfig) -> TableRows:
    total = notes.total_steps
    starts, padded = window_starts(total, config)
    pitched = notes.take(~notes.is_drum)
    window = config.window_steps
    if len(pitched.pitch) == 0 or len(starts) == 0:
        return TableRows(np.empty((0, window), np.uint8), {"start_step": [], "piece_steps": []})
    top, struck = skyline(pitched.pitch, pitched.onset_step, pitched.duration_steps, padded)
    windows, _ = windowed_tokens(top, struck, starts, window)
    keep = note_ons(windows) >= config.min_note_ons_per_window
    return TableRows(
        windows[keep],
        {"start_step": starts[keep].tolist(), "piece_steps": [total] * int(keep.sum())},
    )


def choose_voices(notes: PieceNotes, voices: int) -> list[int]:
    """The `voices` non-drum tracks with the most notes, highest mean pitch first; [] if too few."""
    pitched = notes.take(~notes.is_drum)
    tracks, counts = np.unique(pitched.track, return_counts=True)
    if len(tracks) < voices:
        return []
    chosen = tracks[np.argsort(-counts, kind="stable")[:voices]]  # ties: the earlier track
    mean_pitch = [pitched.pitch[pitched.track == track].mean() for track in chosen]
    return [int(chosen[i]) for i in np.argsort(-np.asarray(mean_pitch), kind="stable")]


def chorale_rows(notes: PieceNotes, config: MidiCorpusConfig) -> TableRows:
    window = config.window_steps
    empty = TableRows(np.empty((0, config.voices, window), np.uint8), {"start_step": []})
    tracks = choose_voices(notes, config.voices)
    starts, padded = window_starts(notes.total_steps, config)
    if not tracks or len(starts) == 0:
        return empty
    lane_of_track = np.full(int(notes.track.max()) + 1, -1, dtype=np.int64)
    lane_of_track[tracks] = np.arange(len(tracks))
    lane = lane_of_track[notes.track]
    voiced = (lane >= 0) & ~notes.is_drum
    top, struck = skylines(
        notes.pitch[voiced], notes.onset_step[voiced], notes.duration_steps[voiced], lane[voiced], len(tracks), padded
    )
    windows, sounding = windowed_tokens(top, struck, starts, window)  # (windows, voices, steps)
    keep = (note_ons(windows).sum(axis=1) >= config.min_note_ons_per_window) & (
        sounding.sum(axis=1) >= config.min_sounding_voices_per_window
    )
    return TableRows(windows[keep], {"start_step": starts[keep].tolist()})


def notes_rows(notes: PieceNotes) -> TableRows:
    return TableRows(None, {name: getattr(notes, name).tolist() for name in _NOTE_FIELDS})


def read_notes(path: str, config: MidiCorpusConfig) -> PieceNotes:
    """Read, parse and validate one MIDI file; its notes on the step grid, or `Rejected`."""
    size = os.path.getsize(path)
    if size > config.max_file_bytes:
        raise Rejected(f"{size:,} bytes, above the limit of {config.max_file_bytes:,}", "read", "FileTooLarge")
    with open(path, "rb") as file:
        data = file.read()
    score = parse_midi(data)
    return validated_notes(data, score, config)


def decode(task: DecodeTask) -> DecodedFile:
    config: MidiCorpusConfig = task.config
    notes = read_notes(task.path, config)
    return DecodedFile(
        content_hash=content_hash(notes),
        tables={
            NOTES_TABLE: notes_rows(notes),
            MELODY_TABLE: melody_rows(notes, config),
            CHORALE_TABLE: chorale_rows(notes, config),
        },
    )


MIDI = Modality("midi", "midi-1", EXTENSIONS, table_specs, decode)
