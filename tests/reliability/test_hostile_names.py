"""Hostile file and folder names in a raw corpus: the ingest writes only under the data root,
keeps every name exactly (as data, never as a path to write to), and the gallery pages
escape them."""
from __future__ import annotations

import hashlib
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from assets import image_gan as image_gan_assets
from assets import music_vae as music_vae_assets
from assets.ingest import CORPUS_ASSET_OF
from corpora.images import IMAGES, ImageCorpusConfig
from corpora.ingest import IngestSettings, ingest, load_manifest, read_rejections
from corpora.shards import read_shards
from tests.conftest import materialization_metadata
from tests.reliability._media import files_under, noise_image, png_bytes

image_corpus = CORPUS_ASSET_OF["images"]

SCRIPT = "<script>alert(1)</script>"
ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"
IMG_ATTACK = '"><img src=x onerror=alert(1)>'

# relpath -> class folder (the label the corpus derives from the path)
HOSTILE_FILES = {
    SCRIPT + ".png": "<script>alert(1)<",  # the '/' makes "<script>alert(1)<" a folder: the relpath is the attack
    f"plain/{IMG_ATTACK}.png": "plain",
    "x\\..\\..\\etc/passwd.png": "x\\..\\..\\etc",  # backslashes are ordinary name characters here
    "%2e%2e%2f%2e%2e%2fetc/shadow.png": "%2e%2e%2f%2e%2e%2fetc",
    " ../dots.png": " ..",
    "$(touch pwned)/`id`.png": "$(touch pwned)",
    "line\nbreak/tab\there.png": "line\nbreak",
    "plain/" + "n" * 246 + ".png": "plain",  # a 250-byte name
    "plain/" + "é" * 123 + ".png": "plain",  # 250 bytes of UTF-8, 127 characters
}


# Names that start with a dot are hidden: the scan skips them by design (never "seen").
HIDDEN_FILES = ["..\\..\\etc/passwd.png", "..%2F..%2Fetc/shadow.png", "... /dots.png", "plain/.htaccess.png"]


def write_hostile_corpus(raw: Path) -> dict[str, str]:
    for index, relpath in enumerate([*HOSTILE_FILES, *HIDDEN_FILES]):
        path = raw / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(noise_image(100 + index)))
    assert len(os.fsencode(raw / "plain" / ("n" * 246 + ".png")).split(b"/")[-1]) == 250
    return HOSTILE_FILES


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with a content hash (files) or a marker (folders, links)."""
    out = {}
    for relpath in files_under(root):
        path = root / relpath
        if path.is_symlink():
            out[relpath] = "link:" + os.readlink(path)
        elif path.is_file():
            out[relpath] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[relpath] = "dir"
    return out


def test_hostile_names_are_ingested_as_data_and_nothing_is_written_outside_the_data_root(
    materialize_asset, data_root, tmp_path
):
    raw = tmp_path / "raw"
    expected = write_hostile_corpus(raw)
    outside = tmp_path / "outside"  # a folder the corpus links to: refused, never followed
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes(noise_image(999)))
    os.symlink(outside, raw / "linked-folder")
    before, siblings_before = snapshot(tmp_path), sorted(os.listdir(tmp_path.parent))

    result = materialize_asset(image_corpus, {"source_dir": str(raw), "resolution": 16, "max_reject_rate": 0.2})
    assert result.success

    after = snapshot(tmp_path)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert changed, "the ingest wrote nothing at all"
    escaped = sorted(p for p in changed if not (p == "data" or p.startswith("data/")))
    assert escaped == [], f"written outside the data root: {escaped}"
    assert all(p in after for p in before), "something was deleted outside the data root"
    assert sorted(os.listdir(tmp_path.parent)) == siblings_before  # nothing beside tmp_path either

    metadata = materialization_metadata(result, image_corpus)
    assert (metadata["files_seen"], metadata["ingested"], metadata["rejected"]) == (len(expected) + 1, len(expected), 1)
    manifest_path = Path(metadata["manifest"])
    [refused] = read_rejections(manifest_path.parent / load_manifest(manifest_path)["rejected"]["path"])
    assert (refused.source_path, refused.error_type) == ("linked-folder", "SymlinkOutsideCorpus")
    assert manifest_path.is_relative_to(data_root)
    manifest = load_manifest(manifest_path)
    for table in manifest["tables"].values():
        for shard in table["shards"]:
            assert (manifest_path.parent / shard["path"]).resolve().is_relative_to(data_root.resolve())
    rows = read_shards(manifest_path.parent / s["path"] for s in manifest["tables"]["images"]["shards"])
    labels = dict(zip(rows.column("source_path").to_pylist(), rows.column("label").to_pylist()))
    assert labels == expected  # every name kept exactly, byte for byte, as data
    assert "linked-folder/secret.png" not in labels  # a linked folder is not walked into
    assert not set(HIDDEN_FILES) & set(labels)


def _non_utf8_corpus(raw: Path, where: str) -> bytes:
    raw.mkdir(parents=True)
    (raw / "good").mkdir()
    (raw / "good" / "fine.png").write_bytes(png_bytes(noise_image(1)))
    folder = os.fsencode(raw) + (b"/caf\xe9-latin1" if where == "folder" else b"/good")
    os.makedirs(folder, exist_ok=True)
    name = folder + (b"/pic.png" if where == "folder" else b"/caf\xe9-latin1.png")
    with open(name, "wb") as file:  # a bytes path: this name has no UTF-8 spelling
        file.write(png_bytes(noise_image(2)))
    return name


@pytest.mark.parametrize("where", ["file", "folder"])
def test_a_non_utf8_name_is_ingested_or_rejected_not_fatal(tmp_path, where):
    raw, out = tmp_path / "raw", tmp_path / "data" / "shards" / "images"
    _non_utf8_corpus(raw, where)
    before = snapshot(tmp_path)
    try:
        report = ingest(IMAGES, ImageCorpusConfig(resolution=16), raw, out, IngestSettings(workers=1))
    finally:  # even a failed ingest must not write outside the data root
        escaped = [p for p in set(snapshot(tmp_path)) - set(before) if not p.startswith("data")]
        assert escaped == []
    counts = report.counts
    assert counts["seen"] == 2 == counts["ingested"] + counts["rejected"] + counts["duplicates"]
    assert counts["ingested"] >= 1
    assert all(r.message for r in report.rejections)
    # the name is recorded as a valid string, its stray byte spelled out where a person sees it
    recorded = set(read_shards(report.shard_paths("images")).column("source_path").to_pylist())
    recorded |= {r.source_path for r in report.rejections}
    hostile = "caf\\xe9-latin1/pic.png" if where == "folder" else "good/caf\\xe9-latin1.png"
    assert recorded == {"good/fine.png", hostile}


# --- the gallery pages ---------------------------------------------------------------------


class TagCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parsed(page: str) -> TagCollector:
    collector = TagCollector()
    collector.feed(page)
    collector.close()
    return collector


def assert_inert(page: str) -> TagCollector:
    """No script element, no event-handler attribute, no javascript: URL: the names stayed text."""
    collector = parsed(page)
    assert "script" not in {tag for tag, _ in collector.tags}
    for tag, attrs in collector.tags:
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        assert not any(str(v).strip().lower().startswith("javascript:") for v in attrs.values() if v), (tag, attrs)
    assert "<script" not in page.lower()
    return collector


HOSTILE_LINEAGE = {
    "model": SCRIPT,
    f"<b>{IMG_ATTACK}</b>": "key",
    "mlflow run": "javascript:alert(1)",
    "shard data version": "</code></td></tr></table><script>alert(3)</script>",
}


def test_image_gallery_escapes_class_names_and_lineage():
    class_names = sorted(set(HOSTILE_FILES.values())) + [IMG_ATTACK]
    seeds = {"samples.png": [0, 1], "interpolation.png": [0, 1], "nearest_neighbours.png": [100]}
    page = image_gan_assets.gallery_html(
        title=SCRIPT, lineage=HOSTILE_LINEAGE, class_names=class_names, seeds=seeds,
        near_copy=np.zeros(8, dtype=bool), metrics_table=f"</pre><script>alert(2)</script>\n\n| {SCRIPT} |\n|---|\n| {IMG_ATTACK} |",
    )
    collector = assert_inert(page)
    assert ESCAPED_SCRIPT in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    # only the page's own pictures, each as a thumbnail and its larger view
    assert sorted(attrs["src"] for tag, attrs in collector.tags if tag == "img") == sorted(2 * list(seeds))
    text = "".join(collector.text)
    for name in class_names:  # each name shows as the text it is
        assert name in text
    for key, value in HOSTILE_LINEAGE.items():
        assert key in text and value in text


def test_music_gallery_escapes_piece_names_links_and_lineage():
    hostile_entry = {
        "name": SCRIPT, "mid": 'x.mid" onclick="alert(1)', "wav": "javascript:alert(1)//.wav",
        "roll": f"{IMG_ATTACK}.png", "mel": "mel.png", "renderer": "<img src=x onerror=alert(1)>", "seconds": 2.0,
    }
    plain_entry = {"name": "melody-0", "mid": "melody-0.mid", "wav": "melody-0.wav", "roll": "melody-0-roll.png",
                   "mel": "melody-0-mel.png", "renderer": "pretty_midi", "seconds": 4.0}
    page = music_vae_assets.gallery_html(SCRIPT, HOSTILE_LINEAGE, [hostile_entry, plain_entry], [hostile_entry],
                                         "</pre><script>alert(2)</script>")
    collector = parsed(page)
    assert "script" not in {tag for tag, _ in collector.tags}
    for tag, attrs in collector.tags:
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
    assert "<script" not in page.lower() and ESCAPED_SCRIPT in page
    # attribute values survive as values (the parser unescapes them), never as new attributes
    links = [attrs["href"] for tag, attrs in collector.tags
             if tag == "a" and not attrs["href"].startswith("#") and attrs.get("class") != "rate"]
    assert links == [hostile_entry["mid"], plain_entry["mid"], hostile_entry["mid"]]
    images = [attrs["src"] for tag, attrs in collector.tags if tag == "img"]
    assert hostile_entry["roll"] in images and "x" not in images
    audio = [attrs["src"] for tag, attrs in collector.tags if tag == "audio"]
    assert audio == [hostile_entry["wav"], plain_entry["wav"], hostile_entry["wav"]]
