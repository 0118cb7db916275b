"""MIDI corpora: every .mid/.midi file becomes notes, melody windows and 4-voice chorale windows.

Parsing is symusic's (native, ~150x faster than pretty_midi/mido). symusic is lenient: it
accepts header-only files, a header that promises more tracks than the file holds, a division
of 0, absurd tempos and deltas of hours. So every file is validated after parsing, and each
problem becomes a `Rejected` with its own error type.

Three tables, all on a grid of `steps_per_quarter` steps per quarter note (16ths by default):

- `notes`: one row per note of the piece (drums included), piece-local step times.
- `melody_windows`: the top voice (skyline: the highest sounding non-drum note at each step)
  as MusicVAE melody tokens, cut into windows of `window_bars` bars.
- `chorale_windows`: four voices (the non-drum tracks with the most notes, soprano to bass),
  each made monophonic and tokenized the same way, cut into the same windows.

Windows start on downbeats. The bar lines come from the file's time signatures (4/4 where it
has none, as the MIDI standard says): each time signature starts a bar, and bars follow at its
length until the next one. A first bar shorter than the one after it is a pickup, so the grid
starts at a downbeat before the piece (a negative start step) and the pickup opens the first
window. Only stretches with `quarters_per_bar` quarters per bar are windowed; the bars of any
other metre are left out of the windows (their notes stay in `notes`) with a `Notice`.

Melody tokens (130 classes, as MusicVAE): 0..127 = note-on of that pitch, NOTE_OFF = 128,
HOLD = 129 (no event: the sounding note goes on, or the silence does). A window is
self-contained: a note already sounding at its first step is struck again there.

For the held-out split, each window row carries a key that is the same for windows equal up
to transposition, and each file a set of keys of its top voice's interval 6-grams, which a
tune shares with its other settings (another key, another harmonisation).
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import symusic

from corpora.ingest import DecodedFile, DecodeTask, Grouping, Modality, Notice, Rejected, TableRows
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
    window_hop_bars: int = 1  # windows start on every downbeat
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
        positive = ("steps_per_quarter", "quarters_per_bar", "window_bars", "window_hop_bars", "voices",
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
        if self.window_hop_bars > self.window_bars:
            raise ValueError(f"window_hop_bars {self.window_hop_bars} > window_bars {self.window_bars}: bars between "
                             "windows would be skipped")

    @property
    def bar_steps(self) -> int:
        return self.quarters_per_bar * self.steps_per_quarter

    @property
    def window_steps(self) -> int:
        return self.window_bars * self.bar_steps


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
    previous = np.empty_like(top)  # the pitch a step before (silence before the first)
    previous[..., 0], previous[..., 1:] = -1, top[..., :-1]
    sounding = top >= 0
    note_on = sounding & ((top != previous) | struck)
    rest = np.where(~sounding & (previous >= 0), NOTE_OFF, HOLD)
    return np.where(note_on, top, rest).astype(np.uint8)


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

    @functools.cached_property  # asked for by several steps of a file's decoding
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

    # one numpy conversion per track, one concatenation per column
    pitch, time, duration, velocity, counts, programs, indices, drums = [], [], [], [], [], [], [], []
    for index, track in enumerate(score.tracks):
        count = track.note_num()
        if count == 0:
            continue
        arrays = track.notes.numpy()
        pitch.append(arrays["pitch"])
        time.append(arrays["time"])
        duration.append(arrays["duration"])
        velocity.append(arrays["velocity"])
        counts.append(count)
        programs.append(track.program)
        indices.append(index)
        drums.append(track.is_drum)
    notes = PieceNotes(
        pitch=np.concatenate(pitch).astype(np.int16),
        onset_step=np.concatenate(time).astype(np.int64),
        duration_steps=np.concatenate(duration).astype(np.int64),  # in ticks until quantized
        velocity=np.concatenate(velocity).astype(np.int16),
        program=np.repeat(np.array(programs, dtype=np.int16), counts),
        track=np.repeat(np.array(indices, dtype=np.int16), counts),
        is_drum=np.repeat(np.array(drums, dtype=bool), counts),
    )

    start, length = notes.onset_step, notes.duration_steps
    if start.min() < 0 or length.min() < 0:
        raise Rejected("a note with a negative time or duration", "validate", "NegativeTime")
    _check_range(notes.pitch, config.lowest_pitch, config.highest_pitch, "pitch", "PitchOutOfRange")
    _check_range(notes.velocity, config.min_velocity, config.max_velocity, "velocity", "VelocityOutOfRange")
    _check_range(notes.program, 0, _MIDI_DATA_MAX, "program", "ProgramOutOfRange")
    end_tick = int((start + length).max())
    slowest_mspq = max(int(mspq.max()) if len(mspq) else 0, _DEFAULT_MSPQ)
    # the slowest tempo throughout bounds the duration: most files need no walk of the tempo map
    if end_tick * slowest_mspq > config.max_duration_s * tpq * 1e6:
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
    start = notes.onset_step.astype(np.int64)
    end = start + notes.duration_steps.astype(np.int64)
    onset = ticks_to_steps(start, tpq, config.steps_per_quarter)
    end_step = ticks_to_steps(end, tpq, config.steps_per_quarter)
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


def ticks_to_steps(ticks: np.ndarray, tpq: int, steps_per_quarter: int) -> np.ndarray:
    """The nearest step to each tick, half up."""
    return (2 * ticks * steps_per_quarter + tpq) // (2 * tpq)


def content_hash(notes: PieceNotes) -> str:
    """Hash of the quantized music itself: the same notes saved twice (other tempo, other
    track order, other file layout) hash the same."""
    content = np.array(
        [notes.onset_step, notes.pitch, notes.duration_steps, notes.velocity, notes.program, notes.is_drum], np.int64)
    content = content[:, np.lexsort(content[::-1])]
    return hashlib.sha256(content.tobytes()).hexdigest()


# --------------------------------------------------------------------------- bars


@dataclass(frozen=True)
class TimeSignatures:
    """A file's time-signature events on the step grid, in file order (parallel arrays)."""

    step: np.ndarray
    numerator: np.ndarray
    denominator: np.ndarray


def time_signatures(score: symusic.Score, config: MidiCorpusConfig) -> TimeSignatures:
    events = score.time_signatures.numpy()
    return TimeSignatures(
        ticks_to_steps(events["time"].astype(np.int64), score.ticks_per_quarter, config.steps_per_quarter),
        events["numerator"].astype(np.int64),
        events["denominator"].astype(np.int64),
    )


@dataclass(frozen=True)
class WindowRun:
    """Consecutive whole bars of the windowed metre: a window may start on any of their downbeats."""

    first_downbeat: int  # a step; negative where the bar before the first downbeat is a pickup
    bars: int
    ends_piece: bool  # its last bar holds the end of the piece, so it may be padded with silence


@dataclass(frozen=True)
class BarGrid:
    runs: list[WindowRun]
    left_out: dict[str, int]  # bars of each other time signature ("3/4": 12): in no window
    bars: int  # every bar of the piece, the pickup included


def bar_grid(signatures: TimeSignatures, total_steps: int, config: MidiCorpusConfig) -> BarGrid:
    """The piece's bars: each time signature starts a bar, and bars of its length follow until
    the next one. A first bar shorter than the bar after it is a pickup: it becomes the end of
    a bar of the following metre whose downbeat lies before step 0."""
    total_steps = max(int(total_steps), 1)
    step, numerator, denominator = signatures.step, signatures.numerator, signatures.denominator
    usable = (numerator > 0) & (denominator > 0)  # x/0 or 0/x has no bar length: ignored
    order = np.argsort(step[usable], kind="stable")
    step, numerator, denominator = step[usable][order], numerator[usable][order], denominator[usable][order]
    # of several events at one step the last one holds; events at or after the end change nothing
    in_effect = step < total_steps
    in_effect[:-1] &= step[1:] != step[:-1]
    step, numerator, denominator = step[in_effect], numerator[in_effect], denominator[in_effect]
    if len(step) == 0 or step[0] > 0:  # until its first time signature a MIDI file is in 4/4
        step, numerator, denominator = np.append(0, step), np.append(4, numerator), np.append(4, denominator)

    end = np.empty_like(step)  # each stretch ends where the next begins, the last with the piece
    end[:-1], end[-1] = step[1:], total_steps
    bar_length = numerator * 4 * config.steps_per_quarter / denominator  # in steps, not always whole
    origin = step.astype(np.float64)  # where each stretch's bar grid starts
    first = 0
    if len(step) > 1 and step[1] <= bar_length[0] and step[1] < bar_length[1]:
        origin[1], first = step[1] - bar_length[1], 1  # a pickup: the next stretch's grid reaches back over it

    runs: list[WindowRun] = []
    left_out: dict[str, int] = {}
    all_bars = 0
    for index in range(first, len(step)):
        span = end[index] - origin[index]
        touched = int(np.ceil(span / bar_length[index] - 1e-9))  # bars that hold some of the stretch
        all_bars += touched
        if bar_length[index] != config.bar_steps:
            signature = f"{numerator[index]}/{denominator[index]}"
            left_out[signature] = left_out.get(signature, 0) + touched
            continue
        ends_piece = index == len(step) - 1
        # a bar cut short by the next time signature is in no window; the piece's last bar may be padded
        bars = touched if ends_piece and config.pad_final_window else int(span // config.bar_steps)
        downbeat = int(origin[index])
        previous = runs[-1] if runs else None
        if previous is not None and previous.first_downbeat + previous.bars * config.bar_steps == downbeat:
            # the bars go on across the signature (a restatement, or 4/4 then 2/2)
            runs[-1] = WindowRun(previous.first_downbeat, previous.bars + bars, ends_piece)
        elif bars:
            runs.append(WindowRun(downbeat, bars, ends_piece))
    return BarGrid(runs, left_out, all_bars)


def window_starts(grid: BarGrid, config: MidiCorpusConfig) -> np.ndarray:
    """First step of every window: `window_bars` whole bars of one run, every `window_hop_bars` bars."""
    hop, bar = config.window_hop_bars, config.bar_steps
    starts = [np.empty(0, dtype=np.int64)]
    for run in grid.runs:
        bars = run.bars
        if run.ends_piece and config.pad_final_window:
            bars = max(config.window_bars, -(-bars // hop) * hop)  # silence to a whole hop keeps the ending
        first_bars = np.arange(0, bars - config.window_bars + 1, hop, dtype=np.int64)
        starts.append(run.first_downbeat + first_bars * bar)
    return np.concatenate(starts)


def meter_notices(grid: BarGrid, config: MidiCorpusConfig) -> list[Notice]:
    if not grid.left_out:
        return []
    left = sum(grid.left_out.values())
    need = f"windows need {config.quarters_per_bar} quarters per bar"
    if left == grid.bars and len(grid.left_out) == 1:
        message = f"{next(iter(grid.left_out))} throughout ({_bars(left)} left out): {need}; the notes are kept"
    else:
        stretches = " and ".join(f"{signature} for {_bars(n)}" for signature, n in grid.left_out.items())
        message = f"{stretches} left out ({left} of {_bars(grid.bars)}): {need}; the notes are kept"
    return [Notice("window", "UnsupportedMeter", message)]


def _bars(count: int) -> str:
    return f"{count} bar{'s' if count != 1 else ''}"


# --------------------------------------------------------------------------- windows


def windowed_tokens(top: np.ndarray, struck: np.ndarray, starts: np.ndarray, window: int):
    """Tokens (len(starts), *lanes, window) and whether anything sounds (len(starts), *lanes).

    `top` and `struck` are (*lanes, steps) from step 0; a window may begin before step 0 or end
    after the last step (silence there). A note sounding at a window's first step is struck there.
    """
    before = max(0, -int(starts.min()))
    after = max(0, int(starts.max()) + window - top.shape[-1])
    if before or after:  # silence around the piece (by hand: np.pad is slow on arrays this small)
        padded_top = np.full((*top.shape[:-1], before + top.shape[-1] + after), -1, dtype=top.dtype)
        padded_struck = np.zeros(padded_top.shape, dtype=bool)
        padded_top[..., before : before + top.shape[-1]] = top
        padded_struck[..., before : before + top.shape[-1]] = struck
        top, struck, starts = padded_top, padded_struck, starts + before
    tokens = tokens_from_skyline(top, struck)
    index = starts[:, None] + np.arange(window)
    windows = np.moveaxis(tokens[..., index], -2, 0)  # (windows, *lanes, window)
    first = np.moveaxis(top[..., starts], -1, 0)
    windows[..., 0] = np.where(first >= 0, first, HOLD)
    sounding = np.moveaxis((top[..., index] >= 0).any(axis=-1), -1, 0)
    return windows, sounding


def note_ons(tokens: np.ndarray) -> np.ndarray:
    return (tokens < NUM_PITCHES).sum(axis=-1)


def transposition_free_keys(windows: np.ndarray) -> np.ndarray:
    """A uint64 key per window (first axis) that is equal exactly for windows equal up to transposition.

    Every note-on is measured from the window's lowest note-on (one shift for all voices), so
    note-ons become 0..127 and NOTE_OFF and HOLD keep their own values.
    """
    flat = windows.reshape(len(windows), math.prod(windows.shape[1:]))
    is_note_on = flat < NUM_PITCHES
    lowest = np.where(is_note_on, flat, NUM_PITCHES).min(axis=1, initial=NUM_PITCHES)
    shift = np.where(lowest < NUM_PITCHES, lowest, 0).astype(np.uint8)
    normalised = np.where(is_note_on, flat - shift[:, None], flat).astype(np.uint8)
    data, width = memoryview(normalised.tobytes()), normalised.shape[1]
    blake2b = hashlib.blake2b
    digests = b"".join([blake2b(data[i : i + width], digest_size=8).digest() for i in range(0, len(data), width)])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


WORK_NGRAM = 6  # intervals per work key


def work_keys(top: np.ndarray, struck: np.ndarray) -> np.ndarray:
    """The distinct uint64 keys of a top voice's interval 6-grams: its struck pitches in time
    order, repeats merged, as successive intervals. No rhythm, no key: another setting of the
    same tune shares most of them."""
    return work_keys_of_tokens(tokens_from_skyline(top, struck))


def work_keys_of_tokens(tokens: np.ndarray) -> np.ndarray:
    """`work_keys` of a top voice already tokenized (silence and HOLDs around it change nothing)."""
    pitches = tokens[tokens < NUM_PITCHES].astype(np.int64)
    intervals = pitches[1:] - pitches[:-1]
    intervals = intervals[intervals != 0]  # a repeated pitch is one event of the tune
    if len(intervals) < WORK_NGRAM:
        return np.empty(0, dtype=np.uint64)
    grams = (intervals + NUM_PITCHES).astype(np.uint64)
    count = len(grams) - WORK_NGRAM + 1
    packed = grams[:count].copy()  # interval i of each n-gram in byte i: exact
    for i in range(1, WORK_NGRAM):
        packed |= grams[i : i + count] << np.uint64(8 * i)
    keys = np.sort(_mix64(packed))
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first]


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 that spreads packed n-grams over all 64 bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def melody_rows(top: np.ndarray, struck: np.ndarray, starts: np.ndarray, total_steps: int,
                config: MidiCorpusConfig) -> tuple[TableRows, np.ndarray]:
    """Melody windows of a piece's top voice (from `skyline`) at `starts`, and their keys."""
    window = config.window_steps
    if len(starts) == 0 or not (top >= 0).any():
        return TableRows(np.empty((0, window), np.uint8), {"start_step": [], "piece_steps": []}), _no_keys()
    windows, _ = windowed_tokens(top, struck, starts, window)
    keep = note_ons(windows) >= config.min_note_ons_per_window
    columns = {"start_step": starts[keep], "piece_steps": np.full(int(keep.sum()), total_steps)}
    rows = TableRows(windows[keep], columns)
    return rows, transposition_free_keys(windows[keep])


def choose_voices(notes: PieceNotes, voices: int) -> list[int]:
    """The `voices` non-drum tracks with the most notes, highest mean pitch first; [] if too few."""
    pitched = ~notes.is_drum
    track = notes.track[pitched].astype(np.int64)
    if len(track) == 0:
        return []
    counts = np.bincount(track)
    tracks = counts.nonzero()[0]
    if len(tracks) < voices:
        return []
    chosen = tracks[np.argsort(-counts[tracks], kind="stable")[:voices]]  # ties: the earlier track
    # exact sums of integer pitches over exact counts: the same floats as a per-track mean
    mean_pitch = np.bincount(track, weights=notes.pitch[pitched].astype(np.float64))[chosen] / counts[chosen]
    return chosen[np.argsort(-mean_pitch, kind="stable")].tolist()


def chorale_rows(notes: PieceNotes, starts: np.ndarray, config: MidiCorpusConfig) -> tuple[TableRows, np.ndarray]:
    window = config.window_steps
    tracks = choose_voices(notes, config.voices)
    if not tracks or len(starts) == 0:
        return TableRows(np.empty((0, config.voices, window), np.uint8), {"start_step": []}), _no_keys()
    lane_of_track = np.full(int(notes.track.max()) + 1, -1, dtype=np.int64)
    lane_of_track[tracks] = np.arange(len(tracks))
    lane = lane_of_track[notes.track]
    voiced = (lane >= 0) & ~notes.is_drum
    top, struck = skylines(
        notes.pitch[voiced], notes.onset_step[voiced], notes.duration_steps[voiced], lane[voiced], len(tracks),
        notes.total_steps,
    )
    windows, sounding = windowed_tokens(top, struck, starts, window)  # (windows, voices, steps)
    keep = (note_ons(windows).sum(axis=1) >= config.min_note_ons_per_window) & (
        sounding.sum(axis=1) >= config.min_sounding_voices_per_window
    )
    return TableRows(windows[keep], {"start_step": starts[keep]}), transposition_free_keys(windows[keep])


def _no_keys() -> np.ndarray:
    return np.empty(0, dtype=np.uint64)


def notes_rows(notes: PieceNotes) -> TableRows:
    return TableRows(None, {name: getattr(notes, name) for name in _NOTE_FIELDS})


def read_score(path: str, config: MidiCorpusConfig) -> tuple[bytes, symusic.Score]:
    """Read and parse one MIDI file, or raise `Rejected`."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > config.max_file_bytes:
            raise Rejected(f"{size:,} bytes, above the limit of {config.max_file_bytes:,}", "read", "FileTooLarge")
        data = file.read()
    return data, parse_midi(data)


def piece_windows(notes: PieceNotes, starts: np.ndarray, config: MidiCorpusConfig):
    """Melody and chorale rows with their keys, and the work keys, in one pass over the piece.

    The same rows and keys as `melody_rows`, `chorale_rows` and `work_keys` (the tests check
    it), built with one `skylines` call for the top voice and the chorale voices together
    (lane 0 is the top voice, lanes 1.. the chorale voices) and one tokenisation of it, so a
    file costs a fixed, small number of array operations whatever its length.
    Returns (melody, melody_keys, chorale, chorale_keys, work_keys).
    """
    window, total_steps = config.window_steps, notes.total_steps
    pitched = ~notes.is_drum
    tracks = choose_voices(notes, config.voices)
    pitch, onset, duration = notes.pitch, notes.onset_step, notes.duration_steps
    if tracks:
        lane_of_track = np.full(int(notes.track.max()) + 2, -1, dtype=np.int64)
        lane_of_track[tracks] = np.arange(1, len(tracks) + 1)
        voice_lane = lane_of_track[notes.track]
        voiced = (voice_lane > 0) & pitched
        select = np.concatenate((np.flatnonzero(pitched), np.flatnonzero(voiced)))
        lane = np.concatenate((np.zeros(int(pitched.sum()), np.int64), voice_lane[voiced]))
        top, struck = skylines(pitch[select], onset[select], duration[select], lane, 1 + len(tracks), total_steps)
    else:
        top, struck = skylines(pitch[pitched], onset[pitched], duration[pitched], np.zeros(int(pitched.sum()), np.int64),
                               1, total_steps)
    if len(starts):
        # silence around the piece where a window reaches before step 0 or past the end; the
        # tokens of the padded skyline are those of the piece with HOLD/NOTE_OFF around them
        before = max(0, -int(starts.min()))
        after = max(0, int(starts.max()) + window - total_steps)
        if before or after:
            padded_top = np.full((top.shape[0], before + total_steps + after), -1, dtype=top.dtype)
            padded_struck = np.zeros(padded_top.shape, dtype=bool)
            padded_top[:, before : before + total_steps] = top
            padded_struck[:, before : before + total_steps] = struck
            top, struck = padded_top, padded_struck
        tokens = tokens_from_skyline(top, struck)
        shifted = starts + before
        index = shifted[:, None] + np.arange(window)
        windows = tokens[:, index].transpose(1, 0, 2)  # (windows, lanes, window)
        first = top[:, shifted].T
        windows[:, :, 0] = np.where(first >= 0, first, HOLD)
        ons = (windows < NUM_PITCHES).sum(axis=2)  # (windows, lanes)
    else:
        tokens = tokens_from_skyline(top, struck)
    keys = work_keys_of_tokens(tokens[0])

    if len(starts) and (top[0] >= 0).any():
        keep = ons[:, 0] >= config.min_note_ons_per_window
        kept = windows[keep, 0]
        melody = TableRows(kept, {"start_step": starts[keep], "piece_steps": np.full(len(kept), total_steps)})
        melody_keys = transposition_free_keys(kept)
    else:
        melody = TableRows(np.empty((0, window), np.uint8), {"start_step": [], "piece_steps": []})
        melody_keys = _no_keys()

    if tracks and len(starts):
        # steps sounding before each step, per lane: a voice sounds in a window if the count grows across it
        sounding_before = np.zeros((top.shape[0] - 1, top.shape[1] + 1), dtype=np.int64)
        np.cumsum(top[1:] >= 0, axis=1, out=sounding_before[:, 1:])
        sounding = (sounding_before[:, shifted + window] > sounding_before[:, shifted]).T  # (windows, voices)
        keep = (ons[:, 1:].sum(axis=1) >= config.min_note_ons_per_window) & (
            sounding.sum(axis=1) >= config.min_sounding_voices_per_window
        )
        kept = windows[keep, 1:]
        chorale = TableRows(kept, {"start_step": starts[keep]})
        chorale_keys = transposition_free_keys(kept)
    else:
        chorale = TableRows(np.empty((0, config.voices, window), np.uint8), {"start_step": []})
        chorale_keys = _no_keys()
    return melody, melody_keys, chorale, chorale_keys, keys


def decode(task: DecodeTask) -> DecodedFile:
    config: MidiCorpusConfig = task.config
    data, score = read_score(task.path, config)
    notes = validated_notes(data, score, config)
    grid = bar_grid(time_signatures(score, config), notes.total_steps, config)
    starts = window_starts(grid, config)
    melody, melody_keys, chorale, chorale_keys, keys = piece_windows(notes, starts, config)
    return DecodedFile(
        content_hash=content_hash(notes),
        tables={NOTES_TABLE: notes_rows(notes), MELODY_TABLE: melody, CHORALE_TABLE: chorale},
        signatures={MELODY_TABLE: melody_keys, CHORALE_TABLE: chorale_keys},
        work_keys=keys,
        notices=meter_notices(grid, config),
    )


# A window is one item up to transposition; two files sharing 40% of their tune's 6-grams are one work.
MIDI = Modality(
    "midi", "midi-2", EXTENSIONS, table_specs, decode,
    grouping=Grouping(exact_tables=(MELODY_TABLE, CHORALE_TABLE), overlap=0.4),
)
