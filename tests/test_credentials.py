"""Content credentials: real PNG, GIF, MP4, WAV and MIDI files signed with the local certificate,
read back by `atelier verify`, and changed after signing."""
from __future__ import annotations

import io
import json
import stat
import wave

import numpy as np
import pretty_midi
import pytest
from PIL import Image

from corpora.shards import png_bytes
from corpora.video import write_video
from models.video_rnn.gallery import write_gif
from pipelines.cli import main
from provenance import credentials
from provenance.credentials import COMPOSITE, Provenance, sidecar_path, sign_file, sign_folder, verify_file

PROVENANCE = Provenance("image-gan", "7", "run-abc", "sha256:data", "c0ffee", (3,),
                        training_licences={"CC0-1.0": 40, "CC-BY-4.0": 2}, training_attribution="Fashion-MNIST, Zalando")


def picture(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def write_media(folder) -> dict:
    """One file of each kind Atelier generates."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "samples.png").write_bytes(png_bytes(picture()))
    frames = np.stack([picture(seed) for seed in range(6)])
    write_video(folder / "clip.mp4", frames, 5.0)
    (folder / "clip.gif").write_bytes(write_gif(None, frames, 5.0))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as audio:
        audio.setnchannels(1), audio.setsampwidth(2), audio.setframerate(8000)
        audio.writeframes((np.sin(np.arange(8000) / 5) * 8000).astype(np.int16).tobytes())
    (folder / "piece.wav").write_bytes(buffer.getvalue())
    midi = pretty_midi.PrettyMIDI()
    midi.instruments.append(pretty_midi.Instrument(0))
    midi.instruments[0].notes.append(pretty_midi.Note(velocity=90, pitch=60, start=0.0, end=0.5))
    midi.write(str(folder / "piece.mid"))
    return {path.suffix: path for path in folder.iterdir()}


def verify_command(path, capsys) -> tuple[int, str]:
    status = main(["verify", str(path)])
    return status, capsys.readouterr().out


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("credentials")
    media = write_media(root / "gallery")
    before = {suffix: path.read_bytes() for suffix, path in media.items()}
    signed_files = sign_folder(root / "gallery", PROVENANCE, root / "data", seeds={"clip.mp4": [4, 5]},
                               composites=["clip.gif"])
    return {"root": root, "media": media, "before": before, "signed": signed_files}


def test_every_generated_file_gets_a_credential_that_validates_and_says_what_made_it(signed, capsys):
    media = signed["media"]
    assert sorted(path.name for path in signed["signed"]) == sorted(path.name for path in media.values())
    assert sidecar_path(media[".mid"]).exists() and media[".mid"].read_bytes() == signed["before"][".mid"]
    for suffix in (".png", ".mp4", ".gif", ".wav"):
        assert media[suffix].read_bytes() != signed["before"][suffix]  # the manifest is inside the file
    for suffix, path in media.items():
        status, out = verify_command(path, capsys)
        assert status == 0, out
        assert out.splitlines()[0] == f"{path}: valid"
        for text in ("image-gan version 7", "run-abc", "sha256:data", "c0ffee", '"CC-BY-4.0": 2',
                     "Fashion-MNIST, Zalando", "Atelier local signer", "trusted:        no"):
            assert text in out, (suffix, out)
    assert verify_file(media[".mp4"]).fields["seeds"] == "4, 5" and verify_file(media[".png"]).fields["seeds"] == "3"
    assert verify_file(media[".png"]).source_type.endswith("/trainedAlgorithmicMedia")
    assert verify_file(media[".gif"]).source_type == COMPOSITE


def test_the_signed_files_still_decode_as_what_they_were(signed):
    media = signed["media"]
    assert np.array_equal(np.asarray(Image.open(media[".png"])), picture())
    with wave.open(str(media[".wav"])) as audio:
        assert audio.getnframes() == 8000
    import av
    with av.open(str(media[".mp4"])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6


def test_a_picture_changed_after_signing_is_reported_as_edited(signed, tmp_path, capsys):
    png = signed["media"][".png"].read_bytes()
    at = png.index(b"IDAT") + 20  # inside the compressed pixels
    tampered = tmp_path / "tampered.png"
    tampered.write_bytes(png[:at] + bytes([png[at] ^ 0xFF]) + png[at + 1:])
    status, out = verify_command(tampered, capsys)
    assert status == 1
    assert out.splitlines()[0] == f"{tampered}: signed, then edited"
    assert "assertion.dataHash.mismatch" in out and "image-gan version 7" in out


def test_audio_and_video_changed_after_signing_are_reported_as_edited(signed, tmp_path):
    for suffix, chunk in ((".wav", b"data"), (".mp4", b"mdat")):
        data = bytearray(signed["media"][suffix].read_bytes())
        data[data.index(chunk) + 100] ^= 0xFF  # a sample, a frame
        tampered = tmp_path / f"tampered{suffix}"
        tampered.write_bytes(bytes(data))
        assert verify_file(tampered).state == "edited", suffix


def test_a_midi_file_changed_after_signing_or_a_forged_sidecar_is_caught(signed, tmp_path, capsys):
    midi, sidecar = signed["media"][".mid"], sidecar_path(signed["media"][".mid"])
    edited = tmp_path / "piece.mid"
    edited.write_bytes(midi.read_bytes() + b"\0")
    sidecar_path(edited).write_bytes(sidecar.read_bytes())
    status, out = verify_command(edited, capsys)
    assert status == 1 and out.splitlines()[0] == f"{edited}: signed, then edited"

    forged = tmp_path / "forged" / "piece.mid"
    forged.parent.mkdir()
    forged.write_bytes(midi.read_bytes())
    document = json.loads(sidecar.read_text())
    document["assertions"][1]["data"]["model_version"] = "8"
    sidecar_path(forged).write_text(json.dumps(document))
    assert verify_file(forged).state == "invalid"


def test_a_file_without_a_credential_says_so(tmp_path, capsys):
    plain = tmp_path / "plain.png"
    plain.write_bytes(png_bytes(picture()))
    status, out = verify_command(plain, capsys)
    assert status == 1 and out.strip() == f"{plain}: no credential"


def test_the_local_key_is_private_and_made_once(signed):
    folder = signed["root"] / "data" / credentials.CREDENTIALS_DIR
    assert stat.S_IMODE((folder / credentials.KEY_FILE).stat().st_mode) == 0o600
    chain = (folder / credentials.CHAIN_FILE).read_bytes()
    again = credentials.signing_identity(signed["root"] / "data")
    assert again.certificate_chain == chain and again.local


def test_a_configured_certificate_signs_instead_of_the_local_one(signed, tmp_path, monkeypatch):
    """A "real" certificate is any chain and key the environment names: here another local pair."""
    other = tmp_path / "other"
    credentials.create_local_identity(other)
    monkeypatch.setenv(credentials.CERT_ENV, str(other / credentials.CHAIN_FILE))
    monkeypatch.setenv(credentials.KEY_ENV, str(other / credentials.KEY_FILE))
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(picture(1)))
    sign_file(path, PROVENANCE, signed["root"] / "data")
    assert verify_file(path).valid
    assert credentials.signing_identity(signed["root"] / "data").certificate_chain != \
        (signed["root"] / "data" / credentials.CREDENTIALS_DIR / credentials.CHAIN_FILE).read_bytes()
