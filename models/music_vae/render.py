"""A token window for the gallery: its .mid file, its audio (through models.midi_audio), and
pictures as numpy uint8 arrays (H, W, 3): a piano roll and a mel spectrogram."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from common.atomic import atomic_write_bytes
from models.midi_audio import SAMPLE_RATE, Rendered, render
from models.music_vae.tokens import (DEFAULT_QPM, NUM_PITCHES, STEPS_PER_QUARTER, tokens_to_midi, tokens_to_midi_bytes,
                                     tokens_to_notes)

# one colour per voice (soprano, alto, tenor, bass), readable on black
VOICE_COLOURS = np.array([[230, 75, 60], [245, 200, 60], [80, 190, 110], [70, 140, 230]], dtype=np.uint8)
PIXELS_PER_STEP, PIXELS_PER_PITCH = 8, 3
MEL_BANDS = 64
MEL_DB_RANGE = 80.0  # dB below the peak shown as black


def write_midi(tokens, path: str | os.PathLike, qpm: float = DEFAULT_QPM, programs: Sequence[int] | None = None) -> Path:
    """A .mid file of one window ((T,) or (V, T), one instrument per voice), written atomically."""
    return atomic_write_bytes(path, tokens_to_midi_bytes(tokens, qpm, programs))


def render_tokens(tokens, renderer: str = "auto", qpm: float = DEFAULT_QPM, programs: Sequence[int] | None = None,
                  sample_rate: int = SAMPLE_RATE) -> Rendered:
    return render(tokens_to_midi_bytes(tokens, qpm, programs), renderer, sample_rate)


def midi_seconds(tokens, qpm: float = DEFAULT_QPM) -> float:
    """The length of the window's MIDI (to its last note's end), in seconds."""
    return tokens_to_midi(tokens, qpm).get_end_time()


def pianoroll_image(tokens, pitch_low: int | None = None, pitch_high: int | None = None) -> np.ndarray:
    """uint8 (H, W, 3) piano roll of one window, one colour per voice, high pitches at the top,
    a dark gap before each note-on so repeated notes stay apart, beat lines every quarter."""
    voices = np.atleast_2d(np.asarray(tokens))
    steps = voices.shape[-1]
    notes = [(v, p, s, d) for v, row in enumerate(voices) for p, s, d in tokens_to_notes(row)]
    pitches = [p for _, p, _, _ in notes]
    low = pitch_low if pitch_low is not None else (min(pitches) - 2 if pitches else 48)
    high = pitch_high if pitch_high is not None else (max(pitches) + 2 if pitches else 84)
    low, high = max(low, 0), min(high, NUM_PITCHES - 1)
    rows = high - low + 1
    image = np.zeros((rows * PIXELS_PER_PITCH, steps * PIXELS_PER_STEP, 3), dtype=np.uint8)
    image[:, :: STEPS_PER_QUARTER * PIXELS_PER_STEP] = 40  # beat lines
    for voice, pitch, start, duration in notes:
        if not low <= pitch <= high:
            continue
        top = (high - pitch) * PIXELS_PER_PITCH
        left, right = start * PIXELS_PER_STEP + 1, (start + duration) * PIXELS_PER_STEP
        image[top : top + PIXELS_PER_PITCH, left:right] = VOICE_COLOURS[voice % len(VOICE_COLOURS)]
    return image


def mel_spectrogram_image(audio: np.ndarray, sample_rate: int, bands: int = MEL_BANDS) -> np.ndarray:
    """uint8 (bands, frames, 3) log-mel spectrogram, low frequencies at the bottom (grey scale)."""
    import librosa

    mel = librosa.feature.melspectrogram(y=np.asarray(audio, dtype=np.float32), sr=sample_rate, n_mels=bands)
    db = librosa.power_to_db(mel, ref=np.max(mel) if mel.size and mel.max() > 0 else 1.0, top_db=MEL_DB_RANGE)
    scaled = np.clip((db + MEL_DB_RANGE) / MEL_DB_RANGE, 0.0, 1.0)[::-1]
    grey = (scaled * 255).round().astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)
