"""Shared plumbing of the ingest assets: config, metadata and the asset checks they report."""
from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import dagster as dg
import pyarrow.parquet as pq

from corpora.defaults import seed_if_empty
from corpora.ingest import IngestReport, IngestSettings, Modality, ingest
from corpora.shards import TableSpec
from provenance.licences import UNKNOWN, counts_text
from resources.compute import ComputeResource
from resources.storage import StorageResource

GROUP = "corpora"
REJECT_RATE_CHECK, SCHEMA_CHECK, NOT_EMPTY_CHECK = "reject_rate", "schema_matches", "not_empty"
LICENCES_CHECK = "licences"
MAX_REJECTIONS_SHOWN = 20


class IngestConfig(dg.Config):
    """Options every corpus shares. A subclass names its corpus's config dataclass and declares
    the fields of it that the launchpad may set; the others keep the dataclass's defaults."""

    CORPUS_CONFIG: ClassVar[type]

    source_dir: str = ""  # empty: <data_root>/raw/<corpus>, seeded with the default corpus when empty
    seed_defaults: bool = True
    heldout_percent: int = IngestSettings.heldout_percent
    # "work": files holding the same tune, scene or picture are held out together; "file": each file alone
    group_by: str = IngestSettings.group_by
    time_split_below_groups: int = IngestSettings.time_split_below_groups  # fewer groups: split long videos by time
    min_heldout_groups: int = IngestSettings.min_heldout_groups  # per folder split by groups, even above heldout_percent
    shard_megabytes: int = IngestSettings.shard_megabytes
    timeout_s: float = IngestSettings.timeout_s
    max_reject_rate: float = 0.05  # the blocking check fails above this share of rejected files
    # The blocking `licences` check (docs/licences.md) fails on an ingested file whose licence is not in
    # licences_allowed (None: any; list "unknown" to allow files the licence file does not cover), and,
    # with block_unknown_licences, on a file the corpus's licence file does not cover.
    licences_allowed: list[str] | None = None
    block_unknown_licences: bool = False

    def settings(self, compute: ComputeResource) -> IngestSettings:
        return IngestSettings(
            heldout_percent=self.heldout_percent,
            group_by=self.group_by,
            time_split_below_groups=self.time_split_below_groups,
            min_heldout_groups=self.min_heldout_groups,
            shard_megabytes=self.shard_megabytes,
            workers=compute.threads,
            timeout_s=self.timeout_s,
        )

    def corpus_config(self):
        declared = type(self).model_fields
        return self.CORPUS_CONFIG(**{field.name: getattr(self, field.name)
                                     for field in dataclasses.fields(self.CORPUS_CONFIG) if field.name in declared})


def corpus_check_specs(asset_name: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(REJECT_RATE_CHECK, asset=asset_name, blocking=True,
                          description="Share of rejected files is at most max_reject_rate."),
        dg.AssetCheckSpec(SCHEMA_CHECK, asset=asset_name, blocking=True,
                          description="Every shard on disk has the schema and tensor metadata the corpus promises."),
        dg.AssetCheckSpec(NOT_EMPTY_CHECK, asset=asset_name, blocking=True,
                          description="At least one file was ingested and the main table has rows."),
        dg.AssetCheckSpec(LICENCES_CHECK, asset=asset_name, blocking=True,
                          description="Every ingested file has a licence the config allows (licences_allowed, "
                          "block_unknown_licences); with neither set it passes and reports the counts."),
    ]


def materialize_corpus(
    context: dg.AssetExecutionContext,
    corpus: str,
    modality: Modality,
    corpus_config,
    config: IngestConfig,
    storage: StorageResource,
    compute: ComputeResource,
    preview: Callable[[IngestReport], bytes | None],
) -> dg.MaterializeResult:
    """Seed (if needed), ingest, and report one corpus as a MaterializeResult."""
    raw_dir = Path(config.source_dir) if config.source_dir else storage.raw_dir(corpus)
    if not config.source_dir and config.seed_defaults:
        seeded = seed_if_empty(corpus, raw_dir)
        if seeded:
            context.log.info(f"seeded {seeded} default {corpus} files into {raw_dir}")
    report = ingest(
        modality, corpus_config, raw_dir, storage.shards_dir(corpus),
        settings=config.settings(compute), progress=context.log.info,
    )
    specs = modality.table_specs(corpus_config)
    return dg.MaterializeResult(
        metadata=_metadata(report, raw_dir, preview),
        data_version=dg.DataVersion(report.version),
        check_results=[*_check_results(report, specs, config.max_reject_rate, context.asset_key.to_user_string()),
                       licence_check_result(report.manifest, config, context.asset_key.to_user_string())],
    )


def _metadata(report: IngestReport, raw_dir: Path, preview) -> dict:
    counts = report.counts
    metadata = {
        "files_seen": counts["seen"],
        "ingested": counts["ingested"],
        "rejected": counts["rejected"],
        "duplicates": counts["duplicates"],
        "reject_rate": dg.MetadataValue.float(float(counts["reject_rate"])),
        "accounted_for": counts["seen"] == counts["ingested"] + counts["rejected"] + counts["duplicates"],
        **{f"rows_{table}": rows for table, rows in counts["rows"].items()},
        **_grouping_metadata(report.manifest),
        "licences": dg.MetadataValue.json(report.manifest["licences"]["files"]),  # ingested files per licence
        "data_version": report.version,
        "decoded_this_run": not report.reused,
        "files_decoded_this_run": report.decoded_files,  # the others came from the row cache (or were refused)
        "elapsed_s": round(report.elapsed_s, 2),
        "source_dir": dg.MetadataValue.path(str(raw_dir)),
        "manifest": dg.MetadataValue.path(str(report.manifest_path)),
        "shards": dg.MetadataValue.json(
            {table: [shard["path"] for shard in info["shards"]] for table, info in report.manifest["tables"].items()}
        ),
    }
    if report.rejections:
        metadata["rejections"] = dg.MetadataValue.md(_rejections_markdown(report))
    picture = preview(report)
    if picture is not None:
        encoded = base64.b64encode(picture).decode("ascii")
        metadata["preview"] = dg.MetadataValue.md(f"![preview](data:image/png;base64,{encoded})")
    return metadata


def _grouping_metadata(manifest: dict) -> dict:
    grouping = manifest["grouping"]
    largest = grouping["largest_group"] or {"files": 0, "example": ""}
    leakage = grouping["leakage"]
    metadata = {
        "groups": grouping["groups"],
        "largest_group_files": largest["files"],
        "largest_group_example": largest["example"],
        "split": dg.MetadataValue.json({name: {k: v for k, v in stratum.items()}
                                        for name, stratum in grouping["strata"].items()}),
        "notices": manifest["counts"].get("notices", 0),
    }
    for table, value in leakage.items():
        metadata[f"leakage_{table}"] = dg.MetadataValue.float(float(value["fraction"]))
    if leakage:
        lines = ["| table | held-out rows | checked | also in training | share | measure |", "|---|---|---|---|---|---|"]
        lines += [f"| {table} | {v['heldout_rows']} | {v['checked']} | {v['leaked']} | {v['fraction']:.4f} | {v['measure']} |"
                  for table, v in leakage.items()]
        metadata["leakage"] = dg.MetadataValue.md("\n".join(lines))
    return metadata


def _rejections_markdown(report: IngestReport) -> str:
    lines = ["| file | stage | error | reason |", "|---|---|---|---|"]
    for r in report.rejections[:MAX_REJECTIONS_SHOWN]:
        cells = [r.source_path, r.stage, r.error_type, r.message[:160]]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    if len(report.rejections) > MAX_REJECTIONS_SHOWN:
        lines.append(f"\n…and {len(report.rejections) - MAX_REJECTIONS_SHOWN} more in the rejected table")
    return "\n".join(lines)


def _check_results(report: IngestReport, specs: list[TableSpec], max_reject_rate: float,
                   asset: str) -> list[dg.AssetCheckResult]:
    """The corpus' checks; a failed one says, in one line, what was measured against which
    threshold and which config key sets it."""
    counts = report.counts
    schema_problems = []
    for spec in specs:
        expected = spec.schema()
        for shard in report.manifest["tables"][spec.name]["shards"]:
            actual = pq.read_schema(report.manifest_path.parent / shard["path"])
            for field in expected:
                if actual.get_field_index(field.name) < 0 or actual.field(field.name).type != field.type:
                    schema_problems.append(f"{shard['path']}: column {field.name} ({field.type}) missing or mistyped")
            for key, value in (expected.metadata or {}).items():
                if (actual.metadata or {}).get(key) != value:
                    schema_problems.append(f"{shard['path']}: tensor metadata {key.decode()} differs")
    main_rows = counts["rows"].get(specs[0].name, 0)
    return [
        dg.AssetCheckResult(
            check_name=REJECT_RATE_CHECK,
            passed=counts["reject_rate"] <= max_reject_rate,
            description=(f"{counts['rejected']} of {counts['seen']} files rejected ({counts['reject_rate']:.1%}), "
                         f"{'within' if counts['reject_rate'] <= max_reject_rate else 'above'} the threshold of "
                         f"{max_reject_rate:.1%} (ops.{asset}.config.max_reject_rate; the rejected table says why)"),
            metadata={"reject_rate": float(counts["reject_rate"]), "threshold": max_reject_rate,
                      "rejected": counts["rejected"], "files_seen": counts["seen"]},
        ),
        dg.AssetCheckResult(
            check_name=SCHEMA_CHECK,
            passed=not schema_problems,
            description=(f"{len(schema_problems)} shard schema problems, the first: {schema_problems[0]}"
                         if schema_problems else "every shard has the promised schema"),
            metadata={"problems": dg.MetadataValue.json(schema_problems[:20])},
        ),
        dg.AssetCheckResult(
            check_name=NOT_EMPTY_CHECK,
            passed=counts["ingested"] > 0 and main_rows > 0,
            description=(f"{counts['ingested']} files ingested, {main_rows} rows in {specs[0].name}"
                         + ("" if counts["ingested"] > 0 and main_rows > 0 else
                            f": nothing to train on (put files in the corpus folder or set ops.{asset}.config.source_dir)")),
            metadata={"ingested": counts["ingested"], f"rows_{specs[0].name}": main_rows},
        ),
    ]


def licence_check_result(manifest: dict, config: IngestConfig, asset: str) -> dg.AssetCheckResult:
    """Fails, naming the licences and the config keys, when an ingested file's licence is not allowed."""
    counts = manifest["licences"]["files"]
    refused = {licence: count for licence, count in counts.items()
               if (config.licences_allowed is not None and licence not in config.licences_allowed)
               or (config.block_unknown_licences and licence == UNKNOWN)}
    summary = counts_text(counts) or "no files"
    if refused:
        description = (f"{sum(refused.values())} ingested files have licences this corpus does not allow: "
                       f"{counts_text(refused)} (ops.{asset}.config.licences_allowed, "
                       f"ops.{asset}.config.block_unknown_licences; the licence file is "
                       f"{manifest['licences']['file'] or 'missing: add LICENSES.csv to the corpus folder'})")
    else:
        description = f"ingested files by licence: {summary}"
    return dg.AssetCheckResult(
        check_name=LICENCES_CHECK, passed=not refused, description=description,
        metadata={"licences": dg.MetadataValue.json(counts), "refused": dg.MetadataValue.json(refused),
                  "allowed": dg.MetadataValue.json(config.licences_allowed),
                  "block_unknown_licences": config.block_unknown_licences},
    )
