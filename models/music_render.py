"""Rendering token windows for the gallery: .mid files, .wav audio, piano-roll and mel pictures.

Audio comes from the fluidsynth command line with a General MIDI soundfont (Debian ships
/usr/share/sounds/sf2/*.sf2) when both are present, else from `pretty_midi.synthesize`
(sine waves). Every renderer call says which one it used, because the two sound nothing
alike and a gallery must not mix them silently.

Pictures are numpy uint8 arrays (H, W, 3); `png_bytes` encodes one. Nothing here imports
corpora/ or dagster.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from models.music_vae import DEFAULT_QPM, NUM_PITCHES, STEPS_PER_QUARTER, tokens_to_midi, tokens_to_midi_bytes, tokens_to_notes

SAMPLE_RATE = 22050
SOUNDFONT_DIR = Path("/usr/share/sounds/sf2")
PREFERRED_SOUNDFONTS = ("TimGM6mb.sf2", "default-GM.sf2", "FluidR3_GM.sf2")
FLUIDSYNTH_GAIN = 0.8  # fluidsynth's default 0.2 renders the small soundfont very quietly
FLUIDSYNTH_TIMEOUT_S = 60
# fluidsynth renders until every voice has died away (~3 s more for a 4 s phrase here) and
# pretty_midi pads a second; both keep this much release after the last note-off, so the
# audio lasts about as long as the MIDI
RELEASE_TAIL_S = 0.5
INT16_FULL_SCALE = 32767
# one colour per voice (soprano, alto, tenor, bass), readable on black
VOICE_COLOURS = np.array([[230, 75, 60], [245, 200, 60], [80, 190, 110], [70, 140, 230]], dtype=np.uint8)
PIXELS_PER_STEP, PIXELS_PER_PITCH = 8, 3
MEL_BANDS = 64
MEL_DB_RANGE = 80.0  # dB below the peak shown as black


# --- MIDI --------------------------------------------------------------------------------


def write_midi(tokens, path: str | os.PathLike, qpm: float = DEFAULT_QPM, programs: Sequence[int] | None = None) -> Path:
    """A .mid file of one window ((T,) or (V, T), one instrument per voice), written atomically."""
    return _atomic_write_bytes(path, tokens_to_midi_bytes(tokens, qpm, programs))


def _atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    # a local copy of corpora.atomic's rule (temp file beside it, fsync, rename): models/ may
    # not import corpora/ in the pyfunc's process
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --- audio -------------------------------------------------------------------------------


@dataclass
class Rendered:
    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    renderer: str  # "fluidsynth" | "pretty_midi"
    soundfont: str | None = None

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    def wav_bytes(self) -> bytes:
        return wav_bytes(self.audio, self.sample_rate)


def find_soundfont() -> Path | None:
    for name in PREFERRED_SOUNDFONTS:
        if (SOUNDFONT_DIR / name).is_file():
            return SOUNDFONT_DIR / name
    found = sorted(SOUNDFONT_DIR.glob("*.sf2")) if SOUNDFONT_DIR.is_dir() else []
    return found[0] if found else None


def fluidsynth_available() -> bool:
    return shutil.which("fluidsynth") is not None and find_soundfont() is not None


def render(midi_data: bytes, renderer: str = "auto", sample_rate: int = SAMPLE_RATE,
           soundfont: str | os.PathLike | None = None) -> Rendered:
    """MIDI bytes -> mono audio. renderer: "auto" (fluidsynth if present, else pretty_midi),
    "fluidsynth" (fails if absent) or "pretty_midi"."""
    if renderer not in ("auto", "fluidsynth", "pretty_midi"):
        raise ValueError(f"renderer must be 'auto', 'fluidsynth' or 'pretty_midi', not {renderer!r}")
    if renderer == "fluidsynth" or (renderer == "auto" and fluidsynth_available()):
        return render_fluidsynth(midi_data, sample_rate, soundfont)
    return render_pretty_midi(midi_data, sample_rate)


def render_fluidsynth(midi_data: bytes, sample_rate: int = SAMPLE_RATE, soundfont: str | os.PathLike | None = None) -> Rendered:
    executable = shutil.which("fluidsynth")
    soundfont = Path(soundfont) if soundfont else find_soundfont()
    if executable is None or soundfont is None:
        raise FileNotFoundError("fluidsynth or a .sf2 soundfont is missing (Debian: apt install fluidsynth fluid-soundfont-gm)")
    with tempfile.TemporaryDirectory(prefix="atelier-render-") as folder:
        midi_path, wav_path = Path(folder) / "in.mid", Path(folder) / "out.wav"
        midi_path.write_bytes(midi_data)
        # -n no MIDI input, -i no shell, -F render to file, -T the file type, -r the rate
        command = [executable, "-ni", "-q", "-g", str(FLUIDSYNTH_GAIN), "-r", str(sample_rate), "-T", "wav",
                   "-F", str(wav_path), str(soundfont), str(midi_path)]
        subprocess.run(command, check=True, capture_output=True, timeout=FLUIDSYNTH_TIMEOUT_S)
        audio, rate = read_wav(wav_path.read_bytes())
    end_s = _midi_end_seconds(midi_data) + RELEASE_TAIL_S
    return Rendered(audio[: int(round(end_s * rate))], rate, "fluidsynth", str(soundfont))


def _midi_end_seconds(midi_data: bytes) -> float:
    import pretty_midi

    return pretty_midi.PrettyMIDI(io.BytesIO(midi_data)).get_end_time()


def render_pretty_midi(midi_data: bytes, sample_rate: int = SAMPLE_RATE) -> Rendered:
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(io.BytesIO(midi_data))
    audio = midi.synthesize(fs=sample_rate)  # it pads a second of silence: cut as fluidsynth's tail
    audio = audio[: int(round((midi.get_end_time() + RELEASE_TAIL_S) * sample_rate))]
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak > 0:
        audio = audio / peak  # synthesize sums sines without normalising
    return Rendered(audio.astype(np.float32), sample_rate, "pretty_midi")


def render_tokens(tokens, renderer: str = "auto", qpm: float = DEFAULT_QPM, programs: Sequence[int] | None = None,
                  sample_rate: int = SAMPLE_RATE) -> Rendered:
    return render(tokens_to_midi_bytes(tokens, qpm, programs), renderer, sample_rate)


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono 16-bit PCM WAV of float audio in [-1, 1]."""
    pcm = (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * INT16_FULL_SCALE).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(sample_rate)
        file.writeframes(pcm.tobytes())
    return buffer.getvalue()


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV bytes -> (float32 mono in [-1, 1], sample rate); stereo is averaged."""
    with wave.open(io.BytesIO(data), "rb") as file:
        if file.getsampwidth() != 2:
            raise ValueError(f"expected 16-bit PCM, got {8 * file.getsampwidth()}-bit")
        channels, rate = file.getnchannels(), file.getframerate()
        pcm = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2")
    audio = pcm.reshape(-1, channels).astype(np.float32).mean(axis=1) / INT16_FULL_SCALE
    return audio, rate


def write_wav(rendered: Rendered, path: str | os.PathLike) -> Path:
    return _atomic_write_bytes(path, rendered.wav_bytes())


# --- pictures ----------------------------------------------------------------------------


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


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def midi_seconds(tokens, qpm: float = DEFAULT_QPM) -> float:
    """The length of the window's MIDI (to its last note's end), in seconds."""
    return tokens_to_midi(tokens, qpm).get_end_time()
