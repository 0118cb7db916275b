"""The image and painting ingest assets, materialized by Dagster on files the tests write."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from assets.ingest import CORPUS_ASSET_OF
from corpora.defaults.painting import read_qt_resources
from corpora.ingest import load_manifest
from corpora.shards import read_shards, tensors_from_table
from tests.conftest import check_outcomes, data_version_of, materialization_metadata

image_corpus = CORPUS_ASSET_OF["images"]
painting_corpus = CORPUS_ASSET_OF["painting"]

RESOLUTION = 16


def random_image(rng: np.random.Generator, size=(RESOLUTION, RESOLUTION), channels=1) -> np.ndarray:
    shape = (*size, channels) if channels > 1 else size
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_labelled_corpus(raw: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Lossless files in several formats at the target size: stored pixels must equal these."""
    rng = np.random.default_rng(seed)
    written = {}
    for label, extension in [("shoe", "png"), ("shoe", "bmp"), ("bag", "webp"), ("bag", "png"), ("coat", "gif")]:
        for index in range(2):
            pixels = random_image(rng)
            path = raw / label / f"{extension}-{index}.{extension}"
            path.parent.mkdir(parents=True, exist_ok=True)
            options = {"lossless": True} if extension == "webp" else {}
            Image.fromarray(pixels).save(path, **options)
            written[f"{label}/{path.name}"] = pixels
    return written


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (with a valid CRC) but holds almost no data."""
    out = io.BytesIO()
    Image.new("L", (1, 1)).save(out, format="PNG")
    data = bytearray(out.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def stored_rows(metadata_manifest: str) -> tuple[np.ndarray, list[dict]]:
    manifest_path = Path(metadata_manifest)
    manifest = load_manifest(manifest_path)
    table = read_shards(manifest_path.parent / s["path"] for s in manifest["tables"]["images"]["shards"])
    return tensors_from_table(table, "pixels"), table.drop(["pixels"]).to_pylist()


def test_ingest_stores_exact_pixels_labels_and_lineage(materialize_asset, data_root, tmp_path):
    raw = tmp_path / "raw"
    originals = write_labelled_corpus(raw)
    result = materialize_asset(image_corpus, {"source_dir": str(raw), "resolution": RESOLUTION})
    assert result.success
    metadata = materialization_metadata(result, image_corpus)
    assert (metadata["files_seen"], metadata["ingested"], metadata["rejected"]) == (10, 10, 0)
    assert metadata["rows_images"] == 10 and metadata["accounted_for"] is True
    assert "data:image/png;base64," in metadata["preview"]
    # the held-out split's grouping is reported: every picture differs, so ten groups and no leakage
    assert metadata["groups"] == 10 and metadata["largest_group_files"] == 1
    assert metadata["leakage_images"] == 0.0 and "equal" not in metadata["leakage"] and "RMS" in metadata["leakage"]

    pixels, rows = stored_rows(metadata["manifest"])
    assert pixels.shape == (10, RESOLUTION, RESOLUTION, 1) and pixels.dtype == np.uint8
    for stored, row in zip(pixels, rows):
        np.testing.assert_array_equal(stored[:, :, 0], originals[row["source_path"]])
        assert row["label"] == row["source_path"].split("/")[0]
        assert row["split"] in {"train", "heldout"} and row["group"].startswith("g-")
        assert len(row["sha256"]) == 64
    assert check_outcomes(result) == {"reject_rate": True, "schema_matches": True, "not_empty": True, "licences": True}


def test_orientation_mode_and_resize(materialize_asset, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(1)
    tall = random_image(rng, size=(20, 10), channels=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(tall).save(raw / "rotated.png", exif=exif)
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent: must come out white
    Image.fromarray(rgba).save(raw / "transparent.png")

    result = materialize_asset(
        image_corpus, {"source_dir": str(raw), "resolution": 10, "channels": 3, "label_from_path": False}
    )
    pixels, rows = stored_rows(materialization_metadata(result, image_corpus)["manifest"])
    by_name = dict(zip((r["source_path"] for r in rows), pixels))
    upright = np.rot90(tall, k=-1)  # 10 x 20 once displayed
    np.testing.assert_array_equal(by_name["rotated.png"], upright[:, 5:15])  # centre crop, no resize needed
    assert (by_name["transparent.png"] == 255).all()
    assert {r["source_path"]: (r["original_width"], r["original_height"]) for r in rows}["rotated.png"] == (20, 10)
    assert all(r["label"] is None for r in rows)


def test_bad_files_are_rejected_with_reasons_and_nothing_is_lost(materialize_asset, tmp_path):
    raw = tmp_path / "raw"
    write_labelled_corpus(raw)
    good = raw / "shoe" / "png-0.png"
    bad = raw / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (bad / "noise.jpg").write_bytes(np.random.default_rng(2).bytes(3000))
    (bad / "notes.png").write_text("this is a text file, not a picture\n")
    (bad / "bomb.png").write_bytes(png_with_claimed_size(100_000, 100_000))
    (bad / "readme.txt").write_text("not an image extension\n")
    (raw / "shoe" / "z-copy-of-png-0.png").write_bytes(good.read_bytes())  # byte-identical
    Image.open(good).save(raw / "shoe" / "z-same-pixels.bmp")  # same pixels, other format

    config = {"source_dir": str(raw), "resolution": RESOLUTION, "max_reject_rate": 0.5}
    result = materialize_asset(image_corpus, config)
    assert result.success  # bad input never fails the run...
    metadata = materialization_metadata(result, image_corpus)
    assert (metadata["files_seen"], metadata["ingested"], metadata["rejected"], metadata["duplicates"]) == (18, 10, 6, 2)
    assert metadata["accounted_for"] is True

    manifest_path = Path(metadata["manifest"])
    manifest = load_manifest(manifest_path)
    rejected = {r["source_path"]: r for r in pq.read_table(manifest_path.parent / manifest["rejected"]["path"]).to_pylist()}
    assert {k: v["error_type"] for k, v in rejected.items()} == {
        "bad/empty.png": "EmptyFile",
        "bad/truncated.png": "CorruptImage",
        "bad/noise.jpg": "UnidentifiedImage",
        "bad/notes.png": "UnidentifiedImage",
        "bad/bomb.png": "DecompressionBomb",
        "bad/readme.txt": "UnsupportedExtension",
    }
    assert "10,000,000,000 pixels" in rejected["bad/bomb.png"]["message"]
    assert all(r["message"] and len(r["sha256"]) == 64 for r in rejected.values())
    assert {d["source_path"]: d["duplicate_of"] for d in manifest["duplicates"]} == {
        "shoe/z-copy-of-png-0.png": "shoe/png-0.png",
        "shoe/z-same-pixels.bmp": "shoe/png-0.png",
    }
    assert "bad/bomb.png" in metadata["rejections"]

    # ...unless the reject rate passes the threshold: then the blocking check stops the run,
    # after the shards and the rejected table have been written for a person to inspect
    strict = materialize_asset(image_corpus, {**config, "max_reject_rate": 0.05})
    assert not strict.success
    assert check_outcomes(strict)["reject_rate"] is False
    assert materialization_metadata(strict, image_corpus)["rejected"] == 6


def test_unchanged_input_decodes_nothing_and_any_change_moves_the_version(materialize_asset, tmp_path):
    raw = tmp_path / "raw"
    write_labelled_corpus(raw)
    config = {"source_dir": str(raw), "resolution": RESOLUTION}

    first = materialize_asset(image_corpus, config)
    again = materialize_asset(image_corpus, config)
    assert materialization_metadata(first, image_corpus)["decoded_this_run"] is True
    assert materialization_metadata(again, image_corpus)["decoded_this_run"] is False
    assert data_version_of(again, image_corpus) == data_version_of(first, image_corpus)

    versions = {data_version_of(first, image_corpus)}
    Image.fromarray(np.zeros((RESOLUTION, RESOLUTION), np.uint8)).save(raw / "bag" / "added.png")
    versions.add(data_version_of(materialize_asset(image_corpus, config), image_corpus))
    Image.fromarray(np.ones((RESOLUTION, RESOLUTION), np.uint8)).save(raw / "bag" / "added.png")
    versions.add(data_version_of(materialize_asset(image_corpus, config), image_corpus))
    (raw / "bag" / "added.png").unlink()
    (raw / "bag" / "png-0.png").unlink()
    versions.add(data_version_of(materialize_asset(image_corpus, config), image_corpus))
    assert len(versions) == 4
    # a config change is a change too
    assert data_version_of(materialize_asset(image_corpus, {**config, "resolution": 8}), image_corpus) not in versions


def test_painting_corpus_seeds_the_bundled_paintings_once(materialize_asset, data_root):
    result = materialize_asset(painting_corpus, {})
    assert result.success
    metadata = materialization_metadata(result, painting_corpus)
    seeded = sorted(p.name for p in (data_root / "raw" / "painting").iterdir() if p.name != "LICENSES.csv")
    assert len(seeded) == 8 and "van-gogh-Van_Gogh_The_Night_Cafe.webp" in seeded
    assert metadata["licences"] == {"LicenseRef-public-domain": 8}  # the seeded licence file covers each
    assert metadata["files_seen"] == len(seeded) and metadata["rejected"] == 0
    pixels, rows = stored_rows(metadata["manifest"])
    assert pixels.shape[1:] == (128, 128, 3)
    # the Night Cafe is 634x500: the stored tensor is its centre square, downscaled
    source = Image.open(data_root / "raw" / "painting" / "van-gogh-Van_Gogh_The_Night_Cafe.webp").convert("RGB")
    assert source.size == (634, 500)
    expected = np.asarray(source.crop((67, 0, 567, 500)).resize((128, 128), Image.Resampling.BOX), dtype=float)
    stored = pixels[[r["source_path"] for r in rows].index("van-gogh-Van_Gogh_The_Night_Cafe.webp")]
    assert np.abs(stored.astype(float) - expected).mean() <= 2.0

    (data_root / "raw" / "painting" / "van-gogh-Gogh4.webp").unlink()  # a user's edit is kept
    second = materialize_asset(painting_corpus, {})
    assert materialization_metadata(second, painting_corpus)["files_seen"] == len(seeded) - 1


def test_the_painting_corpus_reader_takes_the_files_out_of_a_qt_resource_bundle(tmp_path):
    """The reader's file for file against a bundle with known contents: a stored and a zlib-compressed file."""
    bundle = qt_resource_bundle({"a.txt": (b"stored", False), "b.bin": (b"packed" * 50, True)})
    assert read_qt_resources(bundle) == {"/dir/a.txt": b"stored", "/dir/b.bin": b"packed" * 50}
    with pytest.raises(ValueError, match="not a Qt resource bundle"):
        read_qt_resources(b"PK" + bundle[2:])


def qt_resource_bundle(files: dict[str, tuple[bytes, bool]]) -> bytes:
    """A format-3 .rcc with the given files (content, compressed) in one folder "dir", as Qt's rcc lays it out."""
    names, data, nodes = b"", b"", []

    def name_entry(name: str) -> int:
        nonlocal names
        offset = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
        return offset

    root = struct.pack(">IHII", 0, 2, 1, 1) + bytes(8)
    folder = struct.pack(">IHII", name_entry("dir"), 2, len(files), 2) + bytes(8)
    for name, (content, compressed) in files.items():
        payload = struct.pack(">I", len(content)) + zlib.compress(content) if compressed else content
        nodes.append(struct.pack(">IHHHI", name_entry(name), 1 if compressed else 0, 0, 0, len(data)) + bytes(8))
        data += struct.pack(">I", len(payload)) + payload
    header_size = 24
    tree = root + folder + b"".join(nodes)
    header = b"qres" + struct.pack(">IIIII", 3, header_size + len(data) + len(names), header_size,
                                   header_size + len(data), 0)
    return header + data + names + tree


@pytest.mark.parametrize("channels", [0, 2, 4])
def test_invalid_channel_config_is_refused(materialize_asset, tmp_path, channels):
    raw = tmp_path / "raw"
    raw.mkdir()
    result = materialize_asset(image_corpus, {"source_dir": str(raw), "channels": channels})
    assert not result.success


def test_an_ingest_killed_while_writing_leaves_the_previous_version_readable(tmp_path, monkeypatch):
    """The manifest is replaced last: dying between shards never exposes a half-written version."""
    import corpora.shards
    from corpora.images import IMAGES, ImageCorpusConfig
    from corpora.ingest import IngestSettings, ingest

    raw, out = tmp_path / "raw", tmp_path / "out"
    write_labelled_corpus(raw)
    settings = IngestSettings(workers=1, shard_megabytes=0)  # shard_megabytes=0: one row per shard
    first = ingest(IMAGES, ImageCorpusConfig(resolution=RESOLUTION), raw, out, settings)
    Image.fromarray(np.zeros((RESOLUTION, RESOLUTION), np.uint8)).save(raw / "bag" / "new.png")

    real_hash = corpora.shards.sha256_file  # the writer hashes each shard as it finishes it
    written = []

    def dies_on_the_third_shard(path):
        if len(written) == 2:
            raise KeyboardInterrupt("killed")  # what a signal looks like from inside Python
        written.append(path)
        return real_hash(path)

    monkeypatch.setattr(corpora.shards, "sha256_file", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        ingest(IMAGES, ImageCorpusConfig(resolution=RESOLUTION), raw, out, settings)
    assert load_manifest(out / "manifest.json")["version"] == first.version
    previous = read_shards(first.shard_paths("images"))
    assert len(previous) == 10  # every shard the old manifest names is still there and readable

    monkeypatch.setattr(corpora.shards, "sha256_file", real_hash)
    resumed = ingest(IMAGES, ImageCorpusConfig(resolution=RESOLUTION), raw, out, settings)
    assert resumed.version != first.version and resumed.counts["ingested"] == 11
    assert len(read_shards(resumed.shard_paths("images"))) == 11
    assert not list(out.rglob("*.tmp"))


def test_the_fast_png_path_gives_the_same_pixels_as_pillow(tmp_path):
    """Plain 8-bit PNGs are decoded by OpenCV, every other file by Pillow: the pixels must not
    depend on which path a file takes."""
    from corpora.images import _load_plain_png, _load_with_pillow, load_image

    rng = np.random.default_rng(5)
    grey, rgb = random_image(rng, (37, 23)), random_image(rng, (19, 41), channels=3)
    rgba = random_image(rng, (12, 12), channels=4)
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("Comment", "a plain text chunk changes no pixel")
    xmp = PngImagePlugin.PngInfo()
    xmp.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>')
    files = {
        "grey.png": (Image.fromarray(grey), {}, True),
        "rgb.png": (Image.fromarray(rgb), {}, True),
        "optimized.png": (Image.fromarray(rgb), {"optimize": True}, True),
        "gamma.png": (Image.fromarray(grey), {"gamma": 0.45}, False),  # Pillow may not write gAMA: either path
        "text.png": (Image.fromarray(rgb), {"pnginfo": meta}, True),
        "xmp_rotated.png": (Image.fromarray(rgb), {"pnginfo": xmp}, False),  # Pillow turns it upright
        "rgba.png": (Image.fromarray(rgba), {}, False),
        "palette.png": (Image.fromarray(rgb).convert("P"), {}, False),
        "grey16.png": (Image.fromarray(grey.astype(np.uint16) * 257), {}, False),
        "grey_trns.png": (Image.fromarray(grey), {"transparency": 7}, False),
    }
    for name, (image, options, fast) in files.items():
        image.save(tmp_path / name, **options)
        data = (tmp_path / name).read_bytes()
        for channels in (1, 3):
            expected = _load_with_pillow(str(tmp_path / name), channels, 10**9)
            got = load_image(str(tmp_path / name), channels, 10**9)
            assert got.dtype == np.uint8 and got.shape == expected.shape, (name, channels)
            np.testing.assert_array_equal(got, expected, err_msg=f"{name} channels={channels}")
            if fast:
                assert _load_plain_png(data, channels, 10**9) is not None, name
            elif name != "gamma.png":
                assert _load_plain_png(data, channels, 10**9) is None, name
    # every RGB triple of a large random picture converts to grey exactly as Pillow does
    many = random_image(rng, (256, 256), channels=3)
    Image.fromarray(many).save(tmp_path / "many.png")
    np.testing.assert_array_equal(load_image(str(tmp_path / "many.png"), 1, 10**9)[:, :, 0],
                                  np.asarray(Image.fromarray(many).convert("L")))


def test_a_shard_streamed_in_row_groups_has_the_bytes_of_one_written_whole(tmp_path):
    """The writer streams each shard a row group at a time (memory flat in the shard size);
    the files must not differ from writing each shard's rows at once, nor depend on how the
    rows arrived."""
    import pyarrow as pa

    from corpora.shards import ShardWriter, TableSpec, TensorColumn, row_group_size_for, tensor_table, write_parquet

    spec = TableSpec("rows", TensorColumn("value", (4,)), {"index": pa.int64(), "name": pa.string()})
    rng = np.random.default_rng(0)
    count = 20000
    table = tensor_table(spec, rng.integers(0, 256, (count, 4), dtype=np.uint8),
                         {"index": list(range(count)), "name": [f"row-{i}" for i in range(count)]})
    writer = ShardWriter(spec, tmp_path, tmp_path, shard_megabytes=1)
    cuts = [0, *np.sort(rng.choice(count, 200, replace=False)).tolist(), count]
    for start, end in zip(cuts, cuts[1:]):
        writer.append(table.slice(start, end - start))
    shards = writer.close()
    assert len(shards) == 3 and shards[0].rows > row_group_size_for(spec.row_nbytes)  # several groups each
    first = 0
    for shard in shards:
        whole = write_parquet(table.slice(first, shard.rows).combine_chunks(), tmp_path / "whole.parquet",
                              row_group_size=row_group_size_for(spec.row_nbytes))
        assert (tmp_path / shard.path).read_bytes() == whole.read_bytes()
        first += shard.rows
    assert first == count and not list(tmp_path.glob(".*.tmp"))
