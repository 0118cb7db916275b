"""The token scheme of the MIDI corpus (MusicVAE's melody encoding) and windows <-> MIDI.

A window is (T,) tokens of one voice or (V, T) of V voices over 130 classes: 0..127 note-on of
that pitch, NOTE_OFF, HOLD (the sounding note or the silence goes on), on a 16th-note grid.

The constants are stated here as well as in corpora/midi.py because the registered pyfunc runs
with only models/ and common/ on its path; every bundle also carries them, and loading checks them.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np

NUM_PITCHES = 128
NOTE_OFF = 128
HOLD = 129
NUM_CLASSES = 130
STEPS_PER_QUARTER = 4  # 16th-note steps
DEFAULT_QPM = 120.0
DEFAULT_VELOCITY = 80
VOICE_NAMES = {1: ("melody",), 4: ("soprano", "alto", "tenor", "bass")}


def token_scheme() -> dict:
    """What a bundle records of the scheme its model was trained on."""
    return {"num_pitches": NUM_PITCHES, "note_off": NOTE_OFF, "hold": HOLD, "num_classes": NUM_CLASSES,
            "steps_per_quarter": STEPS_PER_QUARTER, "qpm": DEFAULT_QPM}


def as_voices(tokens, voices: int) -> np.ndarray:
    """uint8 (N, T) or (N, V, T) windows -> (N, V, T), checked against the token range."""
    tokens = np.asarray(tokens)
    if tokens.ndim == 2 and voices == 1:
        tokens = tokens[:, None, :]
    if tokens.ndim != 3 or tokens.shape[1] != voices:
        raise ValueError(f"expected windows shaped (N, {voices}, T) or (N, T) for one voice, got {tokens.shape}")
    if tokens.size and int(tokens.max()) >= NUM_CLASSES:
        raise ValueError(f"tokens must lie in 0..{NUM_CLASSES - 1}")
    return tokens


def tokens_to_notes(tokens) -> list[tuple[int, int, int]]:
    """(pitch, onset_step, duration_steps) per note-on of one voice's tokens. A note lasts until
    the next note-on or NOTE_OFF, or to the end; leading HOLDs are silence."""
    tokens = np.asarray(tokens)
    events = [i for i, token in enumerate(tokens) if token != HOLD]
    ends = events[1:] + [len(tokens)]
    return [(int(tokens[s]), s, e - s) for s, e in zip(events, ends) if tokens[s] < NUM_PITCHES]


def step_seconds(qpm: float = DEFAULT_QPM) -> float:
    return 60.0 / qpm / STEPS_PER_QUARTER


def tokens_to_midi(tokens, qpm: float = DEFAULT_QPM, programs: Sequence[int] | None = None,
                   velocity: int = DEFAULT_VELOCITY):
    """A pretty_midi.PrettyMIDI of one window: (T,) one voice, or (V, T), one instrument per voice."""
    import pretty_midi

    voices = np.atleast_2d(np.asarray(tokens))
    names = VOICE_NAMES.get(len(voices), tuple(f"voice {i}" for i in range(len(voices))))
    programs = list(programs) if programs is not None else [0] * len(voices)
    midi = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    dt = step_seconds(qpm)
    for voice, name, program in zip(voices, names, programs):
        instrument = pretty_midi.Instrument(program=int(program), name=name)
        for pitch, onset, duration in tokens_to_notes(voice):
            instrument.notes.append(pretty_midi.Note(velocity=velocity, pitch=pitch, start=onset * dt, end=(onset + duration) * dt))
        midi.instruments.append(instrument)
    return midi


def tokens_to_midi_bytes(tokens, qpm: float = DEFAULT_QPM, programs: Sequence[int] | None = None) -> bytes:
    buffer = io.BytesIO()
    tokens_to_midi(tokens, qpm, programs).write(buffer)
    return buffer.getvalue()


def _voice_tokens(notes: list[tuple[int, int, int]], steps: int) -> np.ndarray:
    """One voice's tokens from (pitch, onset, end) steps: the highest sounding note wins a step."""
    top = np.full(steps, -1, dtype=np.int64)
    struck = np.zeros(steps, dtype=bool)
    for pitch, onset, end in notes:
        onset, end = max(onset, 0), min(end, steps)
        if end > onset:
            top[onset:end] = np.maximum(top[onset:end], pitch)
    for pitch, onset, _ in notes:
        if 0 <= onset < steps and top[onset] == pitch:
            struck[onset] = True
    tokens = np.full(steps, HOLD, dtype=np.uint8)
    previous = np.concatenate([[-1], top[:-1]])
    note_on = (top >= 0) & ((top != previous) | struck)
    tokens[note_on] = top[note_on]
    tokens[(top < 0) & (previous >= 0)] = NOTE_OFF
    return tokens


def midi_bytes_to_tokens(data: bytes, voices: int = 1, steps: int = 32) -> np.ndarray:
    """The first `steps` 16th steps of a MIDI file as tokens: (steps,) for one voice (the skyline
    of every non-drum note) or (voices, steps), one voice per instrument, highest mean pitch
    first (the `voices` instruments with most notes; missing voices are silent)."""
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(io.BytesIO(data))
    ticks_per_step = midi.resolution / STEPS_PER_QUARTER

    def to_steps(instrument) -> list[tuple[int, int, int]]:
        out = []
        for note in instrument.notes:
            onset = int(round(midi.time_to_tick(note.start) / ticks_per_step))
            end = max(int(round(midi.time_to_tick(note.end) / ticks_per_step)), onset + 1)
            out.append((note.pitch, onset, end))
        return out

    parts = [to_steps(i) for i in midi.instruments if not i.is_drum and i.notes]
    if voices == 1:
        return _voice_tokens([note for part in parts for note in part], steps)
    parts = sorted(parts, key=len, reverse=True)[:voices]
    parts.sort(key=lambda part: -np.mean([pitch for pitch, _, _ in part]))
    rows = [_voice_tokens(part, steps) for part in parts]
    rows += [np.full(steps, HOLD, dtype=np.uint8)] * (voices - len(rows))
    return np.stack(rows)
