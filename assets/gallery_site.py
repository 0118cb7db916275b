"""data/galleries/index.html: every family's champion and recent versions, with lineage.

A static page with relative links, so it opens from file:// with no server. Each gallery
asset leaves a `cover.json` in its version folder naming the few files the site shows for it
(an image, a sound, a video); the site reads the registry for versions, aliases and lineage.
Its rating links go to `rate.html`: served by `atelier gallery`, that is the rating pages; opened
from a file, a note on how to start the server.
"""
import html
import json
from pathlib import Path

import dagster as dg

from assets.gallery_page import COVER_FILE, COVER_KINDS, LIGHTBOX_STYLE, RATE_PAGE, figure, model_label, rate_link
from assets.human_preference import human_preference
from common.atomic import atomic_write_text
from models.family import FamilyRecord, families
from provenance.licences import trained_on_text
from ratings import DEFAULT_PORT
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource

CODE_VERSION = "gallery-site-7"  # 5: links to the rating pages; 6: people's score beside the metric; 7: licences
RECENT_VERSIONS = 10


class SiteConfig(dg.Config):
    # family name -> why it was not updated by this run, one line (`atelier run` fills it in)
    failures: dict[str, str] = {}


def _version_rows(registry: MlflowRegistry, family: FamilyRecord, galleries: Path) -> tuple[list[dict], str | None]:
    from mlflow.exceptions import MlflowException

    client = registry.client()
    try:
        aliases = client.get_registered_model(family.name).aliases
    except MlflowException:
        return [], None
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    versions = sorted(client.search_model_versions(f"name='{family.name}'"), key=lambda v: -int(v.version))
    rows = []
    for mv in versions[:RECENT_VERSIONS]:
        folder = galleries / family.name / str(mv.version)
        rows.append({
            "version": str(mv.version), "aliases": sorted(by_version.get(str(mv.version), [])),
            "metric": mv.tags.get(family.rule.metric, ""), "people": _people(mv.tags),
            "data_version": mv.tags.get("data_version", ""),
            "git_commit": mv.tags.get("git_commit", ""), "dagster_run_id": mv.tags.get("dagster_run_id", ""),
            "trained_on": trained_on_text(mv.tags),
            "dagster_run_url": mv.tags.get("dagster_run_url", ""), "mlflow_run_id": mv.run_id or "",
            "mlflow_url": registry.model_version_url(family.name, mv.version),
            "gallery": f"{family.name}/{mv.version}/index.html" if (folder / "index.html").is_file() else "",
            "cover": _read_cover(folder, f"{family.name}/{mv.version}"),
        })
    champion = next((v for v, names in by_version.items() if "champion" in names), None)
    return rows, champion


def _people(tags: dict) -> str:
    """The human_preference asset's tags as one cell: score [95% interval], votes and flags."""
    if "human_votes" not in tags:
        return ""
    votes = int(tags["human_votes"])
    flags = sum(int(value) for name, value in tags.items() if name.startswith("human_flags_"))
    text = f"{votes} vote{'s' * (votes != 1)}" + (f", {flags} flag{'s' * (flags != 1)}" if flags else "")
    if "human_score" in tags:
        text = f"{tags['human_score']} [{tags['human_score_low']}, {tags['human_score_high']}], " + text
    return text


def _read_cover(folder: Path, prefix: str) -> list[dict]:
    try:
        items = json.loads((folder / COVER_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [{"kind": i["kind"], "src": f"{prefix}/{i['src']}", "caption": str(i.get("caption", ""))} for i in items
            if i.get("kind") in COVER_KINDS and (folder / i["src"]).is_file()]


def _link(text: str, url: str) -> str:
    e = html.escape
    return f'<a href="{e(url)}">{e(text)}</a>' if url else e(text)


def _cover_html(cover: list[dict], model: str) -> str:
    """The champion's cover files, each in a figure captioned with its model version (and seeds, where
    the gallery gave them); pictures open larger on click."""
    e = html.escape
    parts = []
    for item in cover:
        caption = item["caption"] or model
        if item["kind"] == "img":
            parts.append(figure(item["src"], f"{model}: {Path(item['src']).name}", caption))
            continue
        tag = ('<audio controls preload="metadata"' if item["kind"] == "audio"
               else '<video controls muted loop preload="metadata"')
        parts.append(f'<figure>{tag} src="{e(item["src"])}"></{item["kind"]}><figcaption>{e(caption)}</figcaption></figure>')
    return "".join(parts)


def site_html(sections: list[tuple[FamilyRecord, list[dict], str | None]], failures: dict[str, str] | None = None) -> str:
    e = html.escape
    body = []
    for family, rows, champion in sections:
        body.append(f"<section><h2>{e(family.title)} <small><code>{e(family.name)}</code></small></h2>")
        if family.name in (failures or {}):
            body.append(f'<p class="failed">Not updated by the last run: {e(failures[family.name])}</p>')
        if not rows:
            body.append("<p>No version registered yet.</p></section>")
            continue
        best = next((row for row in rows if row["version"] == champion), None)
        if best is not None:
            gallery = _link("gallery", best["gallery"]) if best["gallery"] else "no gallery yet"
            model = model_label(family.name, best["version"])
            rate = rate_link(family.name)
            body.append(f'<p>Champion: version {e(best["version"])} ({e(family.rule.metric)} {e(best["metric"])}), '
                        f'{gallery}, {rate}</p><div class="cover">{_cover_html(best["cover"], model)}</div>')
        body.append(f"<table><tr><th>version</th><th>aliases</th><th>{e(family.rule.metric)}</th><th>people</th>"
                    "<th>shard data version</th><th>git commit</th><th>MLflow run</th><th>Dagster run</th>"
                    "<th>trained on (files per licence)</th><th>gallery</th></tr>")
        for row in rows:
            body.append(
                f'<tr><td>{_link(row["version"], row["mlflow_url"])}</td><td>{e(", ".join(row["aliases"]))}</td>'
                f'<td>{e(row["metric"])}</td><td>{e(row["people"])}</td><td><code>{e(row["data_version"][:16])}</code></td>'
                f'<td><code>{e(row["git_commit"][:10])}</code></td><td><code>{e(row["mlflow_run_id"][:12])}</code></td>'
                f'<td>{_link(row["dagster_run_id"][:8], row["dagster_run_url"])}</td><td>{e(row["trained_on"])}</td>'
                f'<td>{_link("open", row["gallery"]) if row["gallery"] else ""}</td></tr>')
        body.append("</table></section>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Atelier galleries</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:75em}} td,th{{padding:0.2em 0.6em;text-align:left}}
.cover{{display:flex;flex-wrap:wrap;gap:1em}} .cover figure{{margin:0}} figcaption{{color:#444;font-size:90%}}
.cover .zoom img,.cover video{{max-height:256px;image-rendering:pixelated}}
.failed{{color:#a00}}
{LIGHTBOX_STYLE}</style></head>
<body><h1>Atelier galleries</h1>
<p>Each family's champion (the best version by its metric) and its recent versions, newest first.
People's ratings: <a href="{RATE_PAGE}">which of two samples is better</a> (served by <code>atelier gallery</code>);
"people" is the Bradley-Terry score from those votes (log-odds, 95% interval), see docs/human-preference.md.</p>
{''.join(body)}
</body></html>
"""


def rate_placeholder_html() -> str:
    """What `rate.html` says when the site is opened from a file: rating needs the server."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Rating needs the gallery server</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:50em}}</style></head>
<body><h1>Rating needs the gallery server</h1>
<p>Votes go to a database, so the rating pages are served, not read from files. Start the server with
<code>atelier gallery</code> (or <code>atelier ui</code>, which starts it beside Dagster and MLflow) and open
<a href="http://127.0.0.1:{DEFAULT_PORT}/rate">http://127.0.0.1:{DEFAULT_PORT}/rate</a> (or the port you gave it).
See docs/ratings.md.</p>
<p><a href="index.html">Back to the galleries</a></p>
</body></html>
"""


def write_site(galleries: Path, sections: list[tuple[FamilyRecord, list[dict], str | None]],
               failures: dict[str, str] | None = None) -> Path:
    """index.html, and rate.html beside it; returns the index."""
    atomic_write_text(galleries / RATE_PAGE, rate_placeholder_html())
    return atomic_write_text(galleries / "index.html", site_html(sections, failures))


@dg.asset(
    group_name="galleries", deps=[*(record.dagster().GALLERY_ASSET for record in families().values()), human_preference],
    code_version=CODE_VERSION, kinds={"html"},
    automation_condition=dg.AutomationCondition.eager(),
    description="data/galleries/index.html: every family's champion and recent versions with lineage; opens from file://.",
)
def gallery_site(context: dg.AssetExecutionContext, config: SiteConfig, storage: StorageResource,
                 mlflow: MlflowRegistry) -> dg.MaterializeResult:
    galleries = storage.root / "galleries"
    sections = [(family, *_version_rows(mlflow, family, galleries)) for family in families().values()]
    index = write_site(galleries, sections, config.failures)
    champions = {family.name: champion or "none" for family, _, champion in sections}
    context.log.info(f"gallery site: champions {champions}")
    return dg.MaterializeResult(metadata={
        "index": dg.MetadataValue.path(str(index)),
        "url": dg.MetadataValue.url(index.resolve().as_uri()),
        "champions": dg.MetadataValue.json(champions),
        "failed_families": dg.MetadataValue.json(config.failures),
    })

