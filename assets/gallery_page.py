"""What every family's gallery page shares: the page skeleton with its lineage table, and the
`cover.json` naming the few files the site shows for a gallery."""
import html
from pathlib import Path

from common.atomic import atomic_write_json

COVER_FILE = "cover.json"
COVER_KINDS = ("img", "audio", "video")


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
