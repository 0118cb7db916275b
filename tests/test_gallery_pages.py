"""The gallery pages a person browses: metric reports as HTML tables, captions that name the model
version and seeds, a larger view for every picture, and every name from input escaped."""
from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from assets import image_gan as image_gan_assets
from assets import video_rnn as video_rnn_assets
from assets.gallery_page import gallery_lineage, metrics_html, provenance, write_cover
from assets.gallery_site import _read_cover, site_html
from corpora.shards import png_bytes
from models.family import families
from models.image_gan.metrics import format_report

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
HOSTILE_FILE = '"><img src=x onerror=alert(3)>.png'  # no "/": a file name
ROW = dict(n=2000, fid_classifier=12.3456, kid_classifier=0.0123, kid_classifier_std=0.001, kid_subset_size=1000,
           precision=0.71, recall=0.52, label_accuracy=0.83, reference_size=10000, neighbours=3, kid_subsets=100)


class Page(HTMLParser):
    """Start tags with their attributes, the text of each table cell and caption, by element."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.cells: list[tuple[str, str]] = []  # (th | td, text)
        self.captions: list[str] = []
        self._open: tuple[str, list[str]] | None = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("th", "td", "figcaption"):
            self._open = (tag, [])

    def handle_endtag(self, tag):
        if self._open and tag == self._open[0]:
            text = "".join(self._open[1]).strip()
            (self.captions.append(text) if tag == "figcaption" else self.cells.append((tag, text)))
            self._open = None

    def handle_data(self, data):
        if self._open:
            self._open[1].append(data)

    def by_id(self, element_id: str) -> tuple[int, dict]:
        return next((i, attrs) for i, (_, attrs) in enumerate(self.tags) if attrs.get("id") == element_id)


def assert_no_markup_from_input(page: Page) -> None:
    assert "script" not in {tag for tag, _ in page.tags}
    assert not [(tag, attrs) for tag, attrs in page.tags if any(name.startswith("on") for name in attrs)]
    assert "x" not in {attrs.get("src") for _, attrs in page.tags}


def assert_every_picture_opens_larger(page: Page) -> list[str]:
    """Each thumbnail links to an overlay (id = the link's fragment) holding the same picture; each has alt text."""
    thumbnails = []
    for index, (tag, attrs) in enumerate(page.tags):
        if tag == "a" and attrs.get("class") == "zoom":
            thumbnail = page.tags[index + 1][1]
            target, overlay = page.by_id(attrs["href"].removeprefix("#"))
            assert overlay["class"] == "lightbox" and page.tags[target][0] == "a"
            assert page.tags[target + 1] == ("img", {**page.tags[target + 1][1], "src": thumbnail["src"]})
            thumbnails.append(thumbnail["src"])
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) == 2 * len(thumbnails) and all(attrs.get("alt", "").strip() for attrs in images)
    return thumbnails


def lineage(version: str = "7") -> dict:
    model_version = ModelVersion("image-gan", version, 0, run_id="run-abc", tags=[ModelVersionTag("git_commit", "c0ffee")])
    return gallery_lineage("image-gan", version, model_version, "sha256:data", "dagster-run")


def test_a_metric_report_becomes_an_html_table_with_its_names_and_values_escaped():
    page = Page(metrics_html(format_report({"real_vs_real": ROW, HOSTILE: {**ROW, "fid_classifier": 99.5}})))
    headers = [text for tag, text in page.cells if tag == "th"]
    assert headers[:3] == ["set", "n", "fid_classifier"] and headers[-1] == "label_accuracy"
    rows = [text for tag, text in page.cells if tag == "td"]
    assert rows[:3] == ["real_vs_real", "2000", "12.346"]
    assert rows[7:10] == [HOSTILE, "2000", "99.500"]  # the name is a cell's text, not markup
    assert ("table", {"class": "metrics"}) in page.tags
    assert_no_markup_from_input(page)


def test_image_gallery_captions_name_version_and_seeds_and_every_picture_opens_larger():
    seeds = {"samples.png": [10, 11, 12], "interpolation.png": [10, 11], "nearest_neighbours.png": [110]}
    html = image_gan_assets.gallery_html("image-gan version 7", lineage(), [HOSTILE, "trouser"], seeds,
                                         np.zeros(8, dtype=bool), format_report({HOSTILE: ROW}))
    page = Page(html)
    assert page.captions == ["image-gan version 7, seeds 10–12", "image-gan version 7, seeds 10, 11",
                             "image-gan version 7, seed 110"]
    assert assert_every_picture_opens_larger(page) == list(seeds)
    assert HOSTILE in [text for tag, text in page.cells if tag == "td"]  # the metric table's row name
    assert_no_markup_from_input(page)


def test_the_site_shows_the_champion_cover_with_its_captions_and_larger_views(tmp_path):
    folder = tmp_path / "image-gan" / "7"
    folder.mkdir(parents=True)
    for name in ("samples.png", HOSTILE_FILE):
        (folder / name).write_bytes(png_bytes(np.zeros((8, 8, 1), dtype=np.uint8)))
    rows_lineage = lineage()
    write_cover(folder, [("img", "samples.png"), ("img", HOSTILE_FILE)],
                {"samples.png": provenance(rows_lineage, [10, 11, 12]), HOSTILE_FILE: HOSTILE})
    record = families()["image-gan"]
    row = {"version": "7", "aliases": ["champion"], "metric": "12.3", "people": "", "data_version": "", "git_commit": "",
           "dagster_run_id": "", "dagster_run_url": "", "mlflow_run_id": "", "mlflow_url": "",
           "trained_on": "MIT: 3 files (training split files)", "gallery": "", "cover": _read_cover(folder, "image-gan/7")}
    page = Page(site_html([(record, [row], "7")]))
    assert page.captions == ["image-gan version 7, seeds 10–12", HOSTILE]
    assert assert_every_picture_opens_larger(page) == ["image-gan/7/samples.png", f"image-gan/7/{HOSTILE_FILE}"]
    assert_no_markup_from_input(page)


def test_video_gallery_captions_name_version_and_seed_and_pictures_open_larger():
    entries = [{"name": "clip-0-mean", "source": HOSTILE, "kind": "digits", "mode": "mean"},
               {"name": "clip-0-sample", "source": HOSTILE, "kind": "digits", "mode": "sample"}]
    page = Page(video_rnn_assets.gallery_html("video-rnn version 7", lineage(), entries, format_report({HOSTILE: ROW})))
    expected = [f"{HOSTILE} (digits): context | truth | prediction. image-gan version 7, mean",
                f"{HOSTILE} (digits): context | truth | prediction. image-gan version 7, seed "
                f"{video_rnn_assets.GALLERY_SEED}, sampled", "image-gan version 7"]
    assert page.captions == expected
    assert assert_every_picture_opens_larger(page) == ["clip-0-mean.gif", "clip-0-sample.gif", "error_by_horizon.png"]
    assert ("a", {"class": "rate", "href": "../../rate.html?family=video-rnn"}) in page.tags  # from galleries/<family>/<version>/
    assert_no_markup_from_input(page)
