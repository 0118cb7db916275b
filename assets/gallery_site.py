"""data/galleries/index.html: every family's champion and recent versions, with lineage.

A static page with relative links, so it opens from file:// with no server. Each gallery
asset leaves a `cover.json` in its version folder naming the few files the site shows for it
(an image, a sound, a video); the site reads the registry for versions, aliases and lineage.
"""
import html
import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from corpora.atomic import atomic_write_json, atomic_write_text
from models import image_gan, music_vae, painting_gan, video_rnn
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource

CODE_VERSION = "gallery-site-2"
COVER_FILE = "cover.json"
RECENT_VERSIONS = 10
COVER_KINDS = ("img", "audio", "video")


@dataclass(frozen=True)
class FamilySite:
    model_name: str
    title: str
    metric: str  # the champion rule's metric: a tag `promote` writes on every version
    gallery_asset: str


FAMILIES = [
    FamilySite("image-gan", "Images (GAN)", image_gan.CHAMPION_RULE.metric, "image_gallery"),
    FamilySite("music-vae", "Music (VAE)", music_vae.CHAMPION_RULE.metric, "music_gallery"),
    FamilySite("painting-gan", "Paintings (StyleGAN2-lite)", painting_gan.CHAMPION_RULE.metric, "painting_gallery"),
    FamilySite("video-rnn", "Video (ConvLSTM + PixelCNN)", video_rnn.CHAMPION_RULE.metric, "video_gallery"),
]


def write_cover(folder: Path, items: list[tuple[str, str]]) -> None:
    """What the site shows for one gallery: (kind, file name in `folder`) pairs, kind in img/audio/video."""
    for kind, name in items:
        if kind not in COVER_KINDS or not (folder / name).is_file():
            raise ValueError(f"cover item {kind} {name!r} is not a file in {folder}")
    atomic_write_json(folder / COVER_FILE, [{"kind": kind, "src": name} for kind, name in items])


def gallery_lineage(model_name: str, version: str, model_version, data_version: str, dagster_run_id: str) -> dict:
    """The rows atop every gallery page: the registered version, and the runs, data and commit that made it."""
    return {
        "model": f"{model_name} version {version}",
        "mlflow run": model_version.run_id,
        "shard data version": data_version,
        "git commit": model_version.tags.get("git_commit", "unknown"),
        "dagster run": dagster_run_id,
    }


def gallery_page(title: str, lineage: dict, body_html: str, metrics_table: str, style: str = "") -> str:
    """A gallery's index.html around the family's `body_html`, which escapes its own input; `style` adds
    to the shared CSS. Title, lineage and metrics are escaped here."""
    e = html.escape
    lineage_rows = "".join(f"<tr><th>{e(k)}</th><td><code>{e(str(v))}</code></td></tr>" for k, v in lineage.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} th{{text-align:left;padding-right:1em}}
{style}</style></head>
<body><h1>{e(title)}</h1>
<table>{lineage_rows}</table>
{body_html}
<h2>Metrics</h2><pre>{e(metrics_table)}</pre>
</body></html>
"""


def _version_rows(registry: MlflowRegistry, family: FamilySite, galleries: Path) -> tuple[list[dict], str | None]:
    from mlflow.exceptions import MlflowException

    client = registry.client()
    try:
        aliases = client.get_registered_model(family.model_name).aliases
    except MlflowException:
        return [], None
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    versions = sorted(client.search_model_versions(f"name='{family.model_name}'"), key=lambda v: -int(v.version))
    rows = []
    for mv in versions[:RECENT_VERSIONS]:
        folder = galleries / family.model_name / str(mv.version)
        rows.append({
            "version": str(mv.version), "aliases": sorted(by_version.get(str(mv.version), [])),
            "metric": mv.tags.get(family.metric, ""), "data_version": mv.tags.get("data_version", ""),
            "git_commit": mv.tags.get("git_commit", ""), "dagster_run_id": mv.tags.get("dagster_run_id", ""),
            "dagster_run_url": mv.tags.get("dagster_run_url", ""), "mlflow_run_id": mv.run_id or "",
            "mlflow_url": registry.model_version_url(family.model_name, mv.version),
            "gallery": f"{family.model_name}/{mv.version}/index.html" if (folder / "index.html").is_file() else "",
            "cover": _read_cover(folder, f"{family.model_name}/{mv.version}"),
        })
    champion = next((v for v, names in by_version.items() if "champion" in names), None)
    return rows, champion


def _read_cover(folder: Path, prefix: str) -> list[dict]:
    try:
        items = json.loads((folder / COVER_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [{"kind": i["kind"], "src": f"{prefix}/{i['src']}"} for i in items
            if i.get("kind") in COVER_KINDS and (folder / i["src"]).is_file()]


def _link(text: str, url: str) -> str:
    e = html.escape
    return f'<a href="{e(url)}">{e(text)}</a>' if url else e(text)


def _cover_html(cover: list[dict]) -> str:
    e = html.escape
    parts = []
    for item in cover:
        src = e(item["src"])
        if item["kind"] == "img":
            parts.append(f'<img src="{src}" alt="{src}">')
        elif item["kind"] == "audio":
            parts.append(f'<audio controls preload="metadata" src="{src}"></audio>')
        else:
            parts.append(f'<video controls muted loop preload="metadata" src="{src}"></video>')
    return "".join(parts)


def site_html(sections: list[tuple[FamilySite, list[dict], str | None]]) -> str:
    e = html.escape
    body = []
    for family, rows, champion in sections:
        body.append(f"<section><h2>{e(family.title)} <small><code>{e(family.model_name)}</code></small></h2>")
        if not rows:
            body.append("<p>No version registered yet.</p></section>")
            continue
        best = next((row for row in rows if row["version"] == champion), None)
        if best is not None:
            gallery = _link("gallery", best["gallery"]) if best["gallery"] else "no gallery yet"
            body.append(f'<p>Champion: version {e(best["version"])} ({e(family.metric)} {e(best["metric"])}), '
                        f'{gallery}</p><div class="cover">{_cover_html(best["cover"])}</div>')
        body.append(f"<table><tr><th>version</th><th>aliases</th><th>{e(family.metric)}</th><th>shard data version</th>"
                    "<th>git commit</th><th>MLflow run</th><th>Dagster run</th><th>gallery</th></tr>")
        for row in rows:
            body.append(
                f'<tr><td>{_link(row["version"], row["mlflow_url"])}</td><td>{e(", ".join(row["aliases"]))}</td>'
                f'<td>{e(row["metric"])}</td><td><code>{e(row["data_version"][:16])}</code></td>'
                f'<td><code>{e(row["git_commit"][:10])}</code></td><td><code>{e(row["mlflow_run_id"][:12])}</code></td>'
                f'<td>{_link(row["dagster_run_id"][:8], row["dagster_run_url"])}</td>'
                f'<td>{_link("open", row["gallery"]) if row["gallery"] else ""}</td></tr>')
        body.append("</table></section>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Atelier galleries</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:75em}} td,th{{padding:0.2em 0.6em;text-align:left}}
.cover img,.cover video{{max-height:256px;margin-right:1em;image-rendering:pixelated}}</style></head>
<body><h1>Atelier galleries</h1>
<p>Each family's champion (the best version by its metric) and its recent versions, newest first.</p>
{''.join(body)}
</body></html>
"""


@dg.asset(
    group_name="galleries", deps=[f.gallery_asset for f in FAMILIES], code_version=CODE_VERSION, kinds={"html"},
    automation_condition=dg.AutomationCondition.eager(),
    description="data/galleries/index.html: every family's champion and recent versions with lineage; opens from file://.",
)
def gallery_site(context: dg.AssetExecutionContext, storage: StorageResource, mlflow: MlflowRegistry) -> dg.MaterializeResult:
    galleries = storage.root / "galleries"
    sections = [(family, *_version_rows(mlflow, family, galleries)) for family in FAMILIES]
    index = galleries / "index.html"
    atomic_write_text(index, site_html(sections))
    champions = {family.model_name: champion or "none" for family, _, champion in sections}
    context.log.info(f"gallery site: champions {champions}")
    return dg.MaterializeResult(metadata={
        "index": dg.MetadataValue.path(str(index)),
        "url": dg.MetadataValue.url(index.resolve().as_uri()),
        "champions": dg.MetadataValue.json(champions),
    })

