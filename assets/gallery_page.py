"""What every family's gallery page shares: the page skeleton with its lineage and metric tables,
pictures that open larger on click, captions that name the model version and seed, and the
`cover.json` naming the few files the site shows for a gallery."""
import hashlib
import html
from urllib.parse import quote
from pathlib import Path

from markdown_it import MarkdownIt

from common.atomic import atomic_write_json
from provenance.licences import TRAINING_ATTRIBUTION_TAG, trained_on_text

COVER_FILE = "cover.json"
COVER_KINDS = ("img", "audio", "video")

# A picture's larger view is a CSS :target overlay: no script, nothing fetched but the picture itself.
# `.lightbox img` outranks a family's plain `img{...}` rule, so its thumbnail sizes stay thumbnails.
LIGHTBOX_STYLE = """.zoom img{cursor:zoom-in}
.lightbox{display:none}
.lightbox:target{display:flex;position:fixed;inset:0;z-index:10;align-items:center;justify-content:center;
background:rgba(0,0,0,.85);cursor:zoom-out}
.lightbox img{width:95vw;height:95vh;max-width:none;object-fit:contain;image-rendering:pixelated}"""
TABLE_STYLE = """table{border-collapse:collapse} td,th{padding:0.2em 0.6em;text-align:left} td code{white-space:pre-line}
.metrics td,.metrics th{border:1px solid #ccc} .metrics thead th{background:#f3f3f3}"""
# GitHub-style Markdown (pipe tables) with raw HTML turned off: every name in a report stays text.
MARKDOWN = MarkdownIt("js-default")


def write_cover(folder: Path, items: list[tuple[str, str]], captions: dict[str, str] | None = None,
                seeds: dict[str, int] | None = None) -> None:
    """What the site shows for one gallery: (kind, file name in `folder`) pairs, kind in img/audio/video,
    an optional caption (plain text) per file name, and the seed a file was drawn from (its first, for a
    grid), which makes it a sample people can rate (ratings/server.py)."""
    for kind, name in items:
        if kind not in COVER_KINDS or not (folder / name).is_file():
            raise ValueError(f"cover item {kind} {name!r} is not a file in {folder}")
    captions, seeds = captions or {}, seeds or {}
    atomic_write_json(folder / COVER_FILE, [
        {"kind": kind, "src": name, **({"caption": captions[name]} if name in captions else {}),
         **({"seed": int(seeds[name])} if name in seeds else {})} for kind, name in items])


def model_label(model_name: str, version: str) -> str:
    return f"{model_name} version {version}"


def gallery_lineage(model_name: str, version: str, model_version, data_version: str, dagster_run_id: str) -> dict:
    """The rows atop every gallery page: the registered version, the runs, data and commit that made it,
    and what it was trained on (files per licence, and their attribution: docs/licences.md)."""
    lineage = {
        "model": model_label(model_name, version),
        "mlflow run": model_version.run_id,
        "shard data version": data_version,
        "git commit": model_version.tags.get("git_commit", "unknown"),
        "dagster run": dagster_run_id,
        "trained on": trained_on_text(model_version.tags),
    }
    if attribution := model_version.tags.get(TRAINING_ATTRIBUTION_TAG):
        lineage["training data credits"] = attribution
    return lineage


def provenance(lineage: dict, seeds: list[int]) -> str:
    """The caption text that says which model version drew a sample, and from which seeds."""
    if len(seeds) == 1:
        return f"{lineage['model']}, seed {seeds[0]}"
    consecutive = len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds)))
    listed = f"{seeds[0]}–{seeds[-1]}" if consecutive else ", ".join(str(seed) for seed in seeds)
    return f"{lineage['model']}, seeds {listed}"


def lightbox_picture(src: str, alt: str) -> str:
    """An <img> that opens full-window on click and closes on the next click: a link to an overlay
    holding the same picture (the id hashes `src`, so any name makes a valid, unique id)."""
    e = html.escape
    target = "view-" + hashlib.sha256(src.encode()).hexdigest()[:16]
    return (f'<a class="zoom" href="#{target}"><img src="{e(src)}" alt="{e(alt)}"></a>'
            f'<a class="lightbox" id="{target}" href="#_" title="close"><img src="{e(src)}" alt="{e(alt)}, enlarged"></a>')


def figure(src: str, alt: str, caption: str) -> str:
    """A picture with its lightbox and a plain-text caption; every string is escaped here."""
    return f"<figure>{lightbox_picture(src, alt)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def metrics_html(report_markdown: str) -> str:
    """A family's metric report (Markdown: pipe tables, paragraphs, bold) as HTML tables and text."""
    return MARKDOWN.render(report_markdown).replace("<table>", '<table class="metrics">')


RATE_PAGE = "rate.html"  # at the site's top; the rating server redirects it to its rating pages


def rate_link(family: str, to_site: str = "") -> str:
    """A link to rate `family`'s champion against its challenger; `to_site` leads from the page to the site's top."""
    return (f'<a class="rate" href="{html.escape(to_site + RATE_PAGE)}?family={html.escape(quote(family))}">'
            "rate it against its challenger</a>")


def gallery_page(title: str, lineage: dict, body_html: str, metrics_table: str, style: str = "", family: str = "") -> str:
    """A gallery's index.html around the family's `body_html`, which escapes its own input; `style` adds
    to the shared CSS. Title, lineage and metrics (`metrics_table`: the report's Markdown) are escaped here."""
    e = html.escape
    lineage_rows = "".join(f"<tr><th>{e(k)}</th><td><code>{e(str(v))}</code></td></tr>" for k, v in lineage.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} figure{{margin:1em 0}} figcaption{{color:#444;font-size:90%}}
{TABLE_STYLE}
{LIGHTBOX_STYLE}
{style}</style></head>
<body><h1>{e(title)}</h1>
<table>{lineage_rows}</table>
{rate_link(family, "../../") if family else ""}
{body_html}
<h2>Metrics</h2>
{metrics_html(metrics_table)}
</body></html>
"""
