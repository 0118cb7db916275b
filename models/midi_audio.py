"""MIDI -> audio, for any family whose samples are MIDI files (`render_wav` for a .wav beside a .mid).

Audio comes from the fluidsynth command line with a General MIDI soundfont (Debian ships
/usr/share/sounds/sf2/*.sf2) when both are present, else from `pretty_midi.synthesize`
(sine waves). Every call says which renderer it used, because the two sound nothing alike
and a gallery must not mix them silently. Only numpy and the standard library at module
level; pretty_midi when a file is rendered.
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

import numpy as np

from common.atomic import atomic_write_bytes

RENDERERS = ("auto", "fluidsynth", "pretty_midi")
SAMPLE_RATE = 22050
SOUNDFONT_DIR = Path("/usr/share/sounds/sf2")
PREFERRED_SOUNDFONTS = ("TimGM6mb.sf2", "default-GM.sf2", "FluidR3_GM.sf2")
FLUIDSYNTH_GAIN = 0.8  # fluidsynth's default 0.2 renders the small soundfont very quietly
FLUIDSYNTH_TIMEOUT_S = 60
# fluidsynth renders until every voice has died away and pretty_midi pads a second; both keep
# this much release after the last note-off, so the audio lasts about as long as the MIDI
RELEASE_TAIL_S = 0.5
INT16_FULL_SCALE = 32767


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
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be 'auto', 'fluidsynth' or 'pretty_midi', not {renderer!r}")
    if renderer == "fluidsynth" or (renderer == "auto" and fluidsynth_available()):
        return render_fluidsynth(midi_data, sample_rate, soundfont)
    return render_pretty_midi(midi_data, sample_rate)


def render_wav(midi_data: bytes, renderer: str = "auto", sample_rate: int = SAMPLE_RATE) -> tuple[bytes, str]:
    """(mono 16-bit WAV bytes, the renderer that made them) of one MIDI file."""
    rendered = render(midi_data, renderer, sample_rate)
    return rendered.wav_bytes(), rendered.renderer


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
    """The rendered audio as a .wav file, written atomically."""
    return atomic_write_bytes(path, rendered.wav_bytes())
