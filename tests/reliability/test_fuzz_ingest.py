"""Fuzzed corpora: hundreds of damaged files per modality never crash an ingest, and every
file ends up in exactly one place (a shard, the rejected table, or the duplicates list).

Mutations are deterministic (fixed seeds): byte flips (anywhere and in the header), cuts,
inserted and deleted runs, zeroed runs, doubled data, and headers spliced onto another
format's bytes (a PNG header followed by MIDI bytes, an MP4 `ftyp` box followed by a PNG...).
The valid seed files are in the folder too, and must come out ingested.
"""
from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corpora.images import IMAGES, ImageCorpusConfig
from corpora.ingest import IngestSettings, ingest, load_manifest, read_rejections
from corpora.midi import MIDI, MidiCorpusConfig
from corpora.shards import read_shards, tensors_from_table
from corpora.video import VIDEO, VideoCorpusConfig
from tests.reliability._media import jpeg_bytes, midi_bytes, moving_frames, mp4_bytes, noise_image, png_bytes


MUTANTS_PER_MODALITY = 210
SETTINGS = IngestSettings(workers=2, timeout_s=10.0, heldout_percent=20)


# --- mutations ---------------------------------------------------------------------------


def flip(rng, data: bytes, zone: int | None = None) -> bytes:
    out = bytearray(data)
    limit = min(len(out), zone) if zone else len(out)
    for _ in range(int(rng.integers(1, 17))):
        out[int(rng.integers(0, limit))] ^= int(rng.integers(1, 256))
    return bytes(out)


def mutate(rng, data: bytes, foreign: list[bytes]) -> tuple[str, bytes]:
    """One mutation of `data`, chosen by rng; returns (kind, bytes). Never returns `data` itself."""
    n = len(data)
    kind = str(rng.choice(["flip", "flip_header", "cut", "cut_tail", "splice_header", "foreign_header",
                           "insert", "delete", "zero", "double"]))
    if kind == "flip":
        return kind, flip(rng, data)
    if kind == "flip_header":
        return kind, flip(rng, data, zone=64)
    if kind == "cut":
        return kind, data[: int(rng.integers(0, n))]
    if kind == "cut_tail":
        return kind, data[: n - int(rng.integers(1, min(n, 64) + 1))]
    other = foreign[int(rng.integers(0, len(foreign)))]
    if kind == "splice_header":  # our header, then another format's bytes
        return kind, data[: int(rng.integers(4, 65))] + other
    if kind == "foreign_header":  # another format's header, then our body
        cut = int(rng.integers(4, 65))
        return kind, other[:cut] + data[cut:]
    at = int(rng.integers(0, n))
    length = int(rng.integers(1, 257))
    if kind == "insert":
        return kind, data[:at] + rng.bytes(length) + data[at:]
    if kind == "delete":
        return kind, data[:at] + data[at + length :] if at + length < n else data[:at]
    if kind == "zero":
        end = min(n, at + length)
        changed = data[:at] + bytes(end - at) + data[end:]
        return (kind, changed) if changed != data else ("flip", flip(rng, data))
    return kind, data + data[: int(rng.integers(1, n + 1))]


def write_fuzz_corpus(raw: Path, seeds: dict[str, bytes], foreign: list[bytes], count: int, seed: int) -> dict:
    """Seeds as `000-seed-*`, so they sort first and win any content-duplicate tie, then `count` mutants."""
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name, data in seeds.items():
        (raw / f"000-seed-{name}").write_bytes(data)
        written[f"000-seed-{name}"] = data
    names = sorted(seeds)
    kinds = Counter()
    for index in range(count):
        source = names[index % len(names)]
        kind, data = mutate(rng, seeds[source], foreign)
        kinds[kind] += 1
        stem, extension = source.rsplit(".", 1)
        relpath = f"m{index // 50}/{index:04d}-{kind}-{stem}.{extension}"  # a few sub-folders too
        (raw / relpath).parent.mkdir(exist_ok=True)
        (raw / relpath).write_bytes(data)
        written[relpath] = data
    assert len(kinds) >= 8, kinds  # the mix really is mixed
    return written


# --- seeds -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    scratch = tmp_path_factory.mktemp("seeds")
    video_seeds = {
        "plain.mp4": mp4_bytes(moving_frames(20, 16, 16, seed=1), 10, scratch / "plain.mp4"),
        "faststart.mp4": mp4_bytes(moving_frames(24, 18, 24, seed=2), 12, scratch / "faststart.mp4", faststart=True),
    }
    return {
        "images": {
            "gray.png": png_bytes(noise_image(1)),
            "rgb.png": png_bytes(noise_image(2, 12, 20, channels=3)),
            "gray.jpg": jpeg_bytes(noise_image(3, 24, 16)),
            "rgb.jpg": jpeg_bytes(noise_image(4, 16, 16, channels=3)),
        },
        "midi": {"quartet.mid": midi_bytes(1), "duet.mid": midi_bytes(2, voices=2, steps=48, qpm=90.0),
                 "solo.mid": midi_bytes(3, voices=1, steps=40)},
        "video": video_seeds,
    }


MODALITIES = {
    # resolution 8 from 12..24-pixel seeds; max_pixels keeps a mutated header from asking for a huge buffer
    "images": (IMAGES, ImageCorpusConfig(resolution=8, channels=1), "images", "pixels"),
    "midi": (MIDI, MidiCorpusConfig(), "notes", None),
    "video": (VIDEO, VideoCorpusConfig(fps=10.0, resolution=8, clip_frames=10, clip_hop_frames=10), "clips", "frames"),
}


@pytest.mark.parametrize("modality_name", sorted(MODALITIES))
def test_fuzzed_files_are_each_accounted_for_exactly_once(tmp_path, seeds, modality_name):
    modality, config, main_table, tensor_column = MODALITIES[modality_name]
    foreign = [data for name, group in seeds.items() if name != modality_name for data in group.values()]
    foreign += [data for data in seeds[modality_name].values()]  # a header of one seed on another's body
    raw, out = tmp_path / "raw", tmp_path / "out"
    written = write_fuzz_corpus(raw, seeds[modality_name], foreign, MUTANTS_PER_MODALITY,
                                seed=sum(map(ord, modality_name)))
    assert len(written) >= 200 + len(seeds[modality_name])

    report = ingest(modality, config, raw, out, SETTINGS)  # must not raise

    counts = report.counts
    assert counts["seen"] == len(written)
    assert counts["seen"] == counts["ingested"] + counts["rejected"] + counts["duplicates"]
    manifest = load_manifest(report.manifest_path)
    assert manifest == report.manifest

    # rejections: each names a real file, a stage, an error type and a reason
    rejections = read_rejections(out / manifest["rejected"]["path"])
    assert len(rejections) == counts["rejected"] == manifest["rejected"]["rows"]
    for r in rejections:
        assert r.source_path in written
        assert r.stage.strip() and r.error_type.strip() and r.message.strip(), r
        assert r.sha256 == hashlib.sha256(written[r.source_path]).hexdigest()
    rejected = {r.source_path for r in rejections}
    assert len(rejected) == len(rejections)

    duplicates = {d["source_path"]: d["duplicate_of"] for d in manifest["duplicates"]}
    assert len(duplicates) == counts["duplicates"]
    assert not rejected & set(duplicates)
    ingested = set(written) - rejected - set(duplicates)
    assert len(ingested) == counts["ingested"]
    for copy, original in duplicates.items():
        assert original in written and original < copy  # the first in path order is kept
        # never another duplicate, never a rejected file (a byte copy of one is rejected too)
        assert original in ingested
    for name in seeds[modality_name]:
        assert f"000-seed-{name}" in ingested, f"valid seed {name} did not make it in"

    # the shards read back, match the manifest, and hold rows of exactly the ingested files
    for table_name, info in manifest["tables"].items():
        paths = [out / shard["path"] for shard in info["shards"]]
        for shard, path in zip(info["shards"], paths):
            assert path.is_file() and not path.name.startswith(".")
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        table = read_shards(paths)
        assert len(table) == info["rows"] == counts["rows"][table_name]
        sources = table.column("source_path").to_pylist()
        assert set(sources) <= ingested
        assert set(table.column("split").to_pylist()) <= {"train", "heldout", "gap"}
        for source, digest in set(zip(sources, table.column("sha256").to_pylist())):
            assert digest == hashlib.sha256(written[source]).hexdigest()
        if table_name == main_table:
            assert set(sources) == ingested  # every ingested file has at least one row here
            if modality_name == "images":
                assert len(sources) == len(ingested)  # one row per picture
            if tensor_column:
                tensors = tensors_from_table(table, tensor_column)
                assert tensors.dtype == np.uint8 and len(tensors) == len(table)

    # decoding everything again from scratch gives the same version: no verdict depends on luck
    # (worker crashes, retries, timing); and the unchanged folder is then reused as is
    again = ingest(modality, config, raw, tmp_path / "out-again", SETTINGS)
    assert not again.reused and again.version == report.version
    assert ingest(modality, config, raw, out, SETTINGS).reused
    print(f"{modality_name}: {counts} in {report.elapsed_s:.1f}s; "
          f"errors {Counter(r.error_type for r in rejections).most_common()}")


# --- bugs the fuzz run found, each reduced to a few files (fixed; these keep them fixed) ---


def _ingest_images(tmp_path: Path, files: dict[str, bytes]):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, data in files.items():
        (raw / name).write_bytes(data)
    report = ingest(IMAGES, ImageCorpusConfig(resolution=8), raw, tmp_path / "out", IngestSettings(workers=1))
    table = read_shards(report.shard_paths("images"))
    return report, set(table.column("source_path").to_pylist())


def test_a_byte_copy_of_a_rejected_file_is_rejected_too(tmp_path):
    good = png_bytes(noise_image(7))
    corrupt = good[: len(good) // 2]
    report, with_rows = _ingest_images(tmp_path, {"a-good.png": good, "b-corrupt.png": corrupt, "c-copy.png": corrupt})
    assert with_rows == {"a-good.png"}
    counts = report.counts
    assert (counts["seen"], counts["ingested"], counts["rejected"], counts["duplicates"]) == (3, 1, 2, 0)
    assert counts["reject_rate"] == 2 / 3
    assert report.manifest["duplicates"] == []
    rejections = {r.source_path: r for r in report.rejections}
    assert set(rejections) == {"b-corrupt.png", "c-copy.png"}
    original, copy = rejections["b-corrupt.png"], rejections["c-copy.png"]
    assert (copy.stage, copy.error_type, copy.sha256) == (original.stage, original.error_type, original.sha256)
    assert "byte-identical copy of b-corrupt.png" in copy.message and original.message in copy.message


def test_duplicate_of_never_names_another_duplicate(tmp_path):
    pixels = noise_image(8)
    same_pixels_as_bmp = io.BytesIO()
    Image.fromarray(pixels).save(same_pixels_as_bmp, format="BMP")
    report, with_rows = _ingest_images(tmp_path, {
        "a.png": png_bytes(pixels), "b.bmp": same_pixels_as_bmp.getvalue(), "c.bmp": same_pixels_as_bmp.getvalue(),
    })
    assert with_rows == {"a.png"} and report.counts["duplicates"] == 2
    duplicates = {d["source_path"]: d["duplicate_of"] for d in report.manifest["duplicates"]}
    assert duplicates == {"b.bmp": "a.png", "c.bmp": "a.png"}


def _video_with_unknown_codec(data: bytes) -> bytes:
    at = data.index(b"avc1", data.index(b"stsd"))  # the sample entry's codec tag (not the ftyp brand)
    return data[:at] + b"zzzz" + data[at + 4 :]  # a codec FFmpeg does not know


def _video_with_non_utf8_brand(data: bytes) -> bytes:
    assert data[4:8] == b"ftyp"
    return data[:8] + b"\x80abc" + data[12:]  # the major brand, which PyAV decodes as UTF-8 metadata


@pytest.mark.parametrize("damage", [_video_with_unknown_codec, _video_with_non_utf8_brand])
def test_a_damaged_video_is_rejected_with_the_decoders_own_reason(tmp_path, seeds, damage):
    from corpora.ingest import DecodeTask, Rejected
    from corpora.video import decode

    path = tmp_path / "damaged.mp4"
    path.write_bytes(damage(seeds["video"]["plain.mp4"]))
    config = MODALITIES["video"][1]
    with pytest.raises(Rejected) as caught:
        decode(DecodeTask(str(path), "damaged.mp4", config))
    assert caught.value.stage in {"read", "decode", "validate"}
    # the reason is about the file, not Python's own error on the way to reading it
    assert caught.value.error_type not in {"Attribute", "UnicodeDecode", "AttributeError", "UnicodeDecodeError"}
    assert "NoneType" not in str(caught.value) and "codec can't decode" not in str(caught.value)
