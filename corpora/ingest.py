"""The ingest engine shared by every corpus: scan, decode in workers, dedupe, shard, manifest.

A modality (images, MIDI, video) supplies only how one file becomes rows; everything a
corpus promises (atomic shards, a rejected-files table, accounting of every file, a
manifest whose hash is the data version, no work when nothing changed) lives here once.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from common.atomic import atomic_write_json, remove_stale_temporaries
from corpora.grouping import FileSignature, SplitPlan, SplitSettings, plan_split
from common.hashing import sha256_file, sha256_json
from corpora.shards import ShardInfo, TableSpec, tensor_table, write_parquet, write_shards
from corpora.workers import ItemFailure, map_isolated

MANIFEST_NAME = "manifest.json"
REJECTED_TABLE = "rejected"
LINEAGE_COLUMNS: dict[str, pa.DataType] = {
    "source_path": pa.string(),
    "sha256": pa.string(),
    "split": pa.string(),  # train, heldout, or gap (rows left out between the sides of a time split)
    "group": pa.string(),  # the work this row belongs to: a group never straddles the split
}
REJECTED_SCHEMA = pa.schema(
    [
        ("source_path", pa.string()),
        ("sha256", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)
NOTICES_TABLE = "notices"
NOTICES_SCHEMA = pa.schema(
    [("source_path", pa.string()), ("sha256", pa.string()), ("stage", pa.string()), ("kind", pa.string()),
     ("message", pa.string())]
)
GROUPS_TABLE = "groups"
GROUPS_SCHEMA = pa.schema(
    [("source_path", pa.string()), ("sha256", pa.string()), ("group", pa.string()), ("stratum", pa.string()),
     ("split", pa.string())]
)

log = logging.getLogger(__name__)


class Rejected(Exception):
    """Raised by a decoder for a file it refuses, with the stage that found the problem."""

    def __init__(self, message: str, stage: str = "validate", error_type: str | None = None):
        super().__init__(message)
        self.stage = stage
        self.error_type = error_type


@dataclass
class TableRows:
    """Rows for one table: a stacked (N, *shape) tensor array (None for a plain table) and columns."""

    tensors: np.ndarray | None
    columns: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        if self.tensors is not None:
            return len(self.tensors)
        return len(next(iter(self.columns.values()), []))


@dataclass(frozen=True)
class Notice:
    """Something a decoder left out of an accepted file, and why (the file's other rows stand)."""

    stage: str
    kind: str
    message: str


@dataclass
class DecodedFile:
    """What one source file contributes: rows per output table, a hash of its content, and the
    small signatures the held-out split groups by (never the decoded content itself)."""

    content_hash: str
    tables: dict[str, TableRows]
    # Per table named in the modality's Grouping, one entry per row of that table: uint64 keys
    # (rows,) that are equal for the same item (a MIDI window up to transposition), or uint8
    # thumbnails (rows, D) that are close for near-identical items (a re-encoded picture).
    signatures: dict[str, np.ndarray] = field(default_factory=dict)
    # uint64 keys of the file as a whole (a tune's interval n-grams): two files that share
    # more than Grouping.overlap of the smaller key set are the same work.
    work_keys: np.ndarray | None = None
    # (rows, 2) first and one-past-last frame of each row of Grouping.time_table, to split a file by time.
    time_spans: np.ndarray | None = None
    notices: list[Notice] = field(default_factory=list)


@dataclass(frozen=True)
class Grouping:
    """How a modality tells that two files are the same work, so the split keeps them together."""

    exact_tables: tuple[str, ...] = ()  # tables whose rows carry uint64 identity keys
    near_tables: tuple[str, ...] = ()  # tables whose rows carry uint8 thumbnails
    near_rms: float = 6.0  # thumbnails at most this far apart (RMS, 0..255 scale) are near-identical
    overlap: float | None = None  # share of work_keys that makes two files one work (None: unused)
    time_table: str | None = None  # a table whose rows may be split by time within each file


@dataclass(frozen=True)
class IngestSettings:
    """How to run an ingest; none of it changes the content of the shards except the split."""

    heldout_percent: int = 10
    shard_megabytes: int = 64
    workers: int = 2
    timeout_s: float = 30.0
    chunk_size: int | None = None  # None: the modality's own choice
    group_by: str = SplitSettings.group_by  # "work": the same tune, scene or picture on one side; "file"
    time_split_below_groups: int = SplitSettings.time_split_below_groups

    def split_settings(self) -> SplitSettings:
        return SplitSettings(heldout_percent=self.heldout_percent, group_by=self.group_by,
                             time_split_below_groups=self.time_split_below_groups)


@dataclass(frozen=True)
class DecodeTask:
    """One file for a worker: where it is, its path inside the corpus, and the corpus config."""

    path: str
    relpath: str
    config: Any


@dataclass(frozen=True)
class Modality:
    """A kind of corpus: how one file becomes rows, and what the output tables look like.

    `decode` must be a module-level function (it is sent to worker processes by name) that
    returns a DecodedFile or raises (preferably `Rejected`, with a reason a person can act on).
    """

    name: str
    code_version: str
    extensions: frozenset[str]
    table_specs: Callable[[Any], list[TableSpec]]
    decode: Callable[[DecodeTask], DecodedFile]
    chunk_size: int = 16  # files per message to a worker: large for cheap files, 1 for slow ones
    grouping: Grouping = Grouping()


@dataclass(frozen=True)
class SourceFile:
    path: str
    relpath: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Rejection:
    source_path: str
    sha256: str
    stage: str
    error_type: str
    message: str


@dataclass
class IngestReport:
    corpus: str
    manifest: dict
    manifest_path: Path
    reused: bool
    elapsed_s: float
    rejections: list[Rejection]

    @property
    def counts(self) -> dict:
        return self.manifest["counts"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def shard_paths(self, table: str) -> list[Path]:
        return shard_paths(self.manifest_path, table)


def displayable(text: str) -> str:
    """`text` as a valid string: a file name that is not UTF-8 reaches Python with surrogate
    escapes, which Parquet and JSON cannot store, so its stray bytes are spelled `\\xe9`."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name makes (only a message could hold one)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _listing(raw_dir: Path) -> list[tuple[str, str, os.stat_result]]:
    """(relative path, path, stat) of every non-hidden file under `raw_dir`, sorted.

    The path is the real one, to open the file by; the relative path is `displayable`, since
    it is recorded (shards, manifest, rejections) and labels are derived from it.
    """
    found: list[tuple[str, str, os.stat_result]] = []

    def walk(folder: str, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, f"{prefix}{entry.name}/")
                elif entry.is_file():
                    found.append((displayable(f"{prefix}{entry.name}"), entry.path, entry.stat()))

    if Path(raw_dir).is_dir():
        walk(str(raw_dir), "")
    found.sort(key=lambda item: item[0])
    return found


def scan(raw_dir: Path) -> list[SourceFile]:
    """Every non-hidden file under `raw_dir`, sorted by relative path, with its content hash."""
    return [SourceFile(path, relpath, stat.st_size, sha256_file(path)) for relpath, path, stat in _listing(raw_dir)]


def folder_signature(raw_dir: Path) -> str:
    """A cheap hash of names, sizes and modification times: when it is unchanged, so is the
    content (barring clock tricks); when it changes, `folder_fingerprint` says whether the
    content did. It reads no file."""
    return sha256_json([(relpath, stat.st_size, stat.st_mtime_ns) for relpath, _, stat in _listing(raw_dir)])


def folder_fingerprint(raw_dir: Path) -> str:
    """A hash of every file's relative path and content: touching a file does not change it."""
    return sha256_json([(f.relpath, f.sha256) for f in scan(raw_dir)])


def load_manifest(manifest_path: Path) -> dict | None:
    import json

    try:
        return json.loads(Path(manifest_path).read_text())
    except (FileNotFoundError, ValueError):
        return None


def shard_paths(manifest_path: Path, table: str) -> list[Path]:
    manifest = load_manifest(manifest_path)
    if manifest is None:
        raise FileNotFoundError(f"no manifest at {manifest_path}")
    return [manifest_path.parent / shard["path"] for shard in manifest["tables"][table]["shards"]]


_SIDE_TABLES = (REJECTED_TABLE, NOTICES_TABLE, GROUPS_TABLE)  # the manifest keys of the tables beside the shards


def _manifest_is_usable(manifest: dict | None, out_dir: Path, fingerprint: str) -> bool:
    if not manifest or manifest.get("input_fingerprint") != fingerprint:
        return False
    files = [shard for table in manifest["tables"].values() for shard in table["shards"]]
    files += [manifest[name] for name in _SIDE_TABLES if name in manifest]
    return all(
        (out_dir / f["path"]).is_file() and (out_dir / f["path"]).stat().st_size == f["bytes"]
        for f in files
    )


def ingest(
    modality: Modality,
    config: Any,
    raw_dir: str | Path,
    out_dir: str | Path,
    settings: IngestSettings = IngestSettings(),
    progress: Callable[[str], None] = log.info,
) -> IngestReport:
    """Turn every file under `raw_dir` into shards under `out_dir`, or reuse the last result."""
    started = time.monotonic()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    manifest_path = out_dir / MANIFEST_NAME

    files = scan(raw_dir) if raw_dir.is_dir() else []
    config_json = asdict(config)
    fingerprint = sha256_json(
        {
            "code_version": modality.code_version,
            "config": config_json,
            "split": asdict(settings.split_settings()),
            "shard_megabytes": settings.shard_megabytes,
            "files": [(f.relpath, f.sha256) for f in files],
        }
    )
    previous = load_manifest(manifest_path)
    if _manifest_is_usable(previous, out_dir, fingerprint):
        progress(f"{modality.name}: {len(files)} files unchanged, reusing version {previous['version'][:12]}")
        rejections = read_rejections(out_dir / previous["rejected"]["path"])
        return IngestReport(modality.name, previous, manifest_path, True, time.monotonic() - started, rejections)

    progress(f"{modality.name}: decoding {len(files)} files from {raw_dir}")
    rejections, duplicates, accepted = _decode_all(modality, config, files, settings, progress)
    plan = plan_split([_signature_of(source, decoded) for source, decoded in accepted], modality.grouping,
                      settings.split_settings())
    progress(_split_line(modality.name, plan.summary))

    version_dir = out_dir / f"v-{fingerprint[:16]}"
    shutil.rmtree(version_dir, ignore_errors=True)  # leftovers of a killed run with the same input
    version_dir.mkdir(parents=True)
    tables = _write_tables(modality.table_specs(config), accepted, plan, modality.grouping.time_table,
                           settings, version_dir, out_dir)
    rejected_info = _write_rejected(rejections, version_dir / f"{REJECTED_TABLE}.parquet", out_dir)
    notices = [{"source_path": source.relpath, "sha256": source.sha256, **asdict(notice)}
               for source, decoded in accepted for notice in decoded.notices]
    notices_info = _write_plain(notices, NOTICES_SCHEMA, version_dir / f"{NOTICES_TABLE}.parquet", out_dir)
    groups = [{"source_path": source.relpath, "sha256": source.sha256, "group": plan.group[i],
               "stratum": plan.stratum[i], "split": plan.file_split[i]} for i, (source, _) in enumerate(accepted)]
    groups_info = _write_plain(groups, GROUPS_SCHEMA, version_dir / f"{GROUPS_TABLE}.parquet", out_dir)

    manifest = {
        "corpus": modality.name,
        "code_version": modality.code_version,
        "config": config_json,
        "config_hash": sha256_json(config_json),
        "heldout_percent": settings.heldout_percent,
        "split": asdict(settings.split_settings()),
        "source_dir": str(raw_dir.resolve()),
        "input_fingerprint": fingerprint,
        "counts": {
            "seen": len(files),
            "ingested": len(accepted),
            "rejected": len(rejections),
            "duplicates": len(duplicates),
            "groups": plan.summary["groups"],
            "notices": len(notices),
            "reject_rate": len(rejections) / len(files) if files else 0.0,
            "rows": {name: table["rows"] for name, table in tables.items()},
        },
        "tables": tables,
        "rejected": rejected_info,
        "notices": notices_info,
        "groups": groups_info,
        "grouping": plan.summary,
        "duplicates": duplicates,
    }
    manifest["version"] = sha256_json(manifest)
    manifest["created_at"] = datetime.now(timezone.utc).isoformat()
    replaced = load_manifest(manifest_path)  # read again: what a reader may hold until this commit
    atomic_write_json(manifest_path, manifest)  # the commit point: readers now see the new shards
    _remove_old_versions(out_dir, manifest, replaced)

    counts = manifest["counts"]
    progress(
        f"{modality.name}: {counts['seen']} seen = {counts['ingested']} ingested + "
        f"{counts['rejected']} rejected + {counts['duplicates']} duplicates; rows {counts['rows']}"
    )
    return IngestReport(modality.name, manifest, manifest_path, False, time.monotonic() - started, rejections)


def _decode_all(modality, config, files: Sequence[SourceFile], settings: IngestSettings, progress):
    """Sort every file into rejected, duplicate or accepted; byte-identical copies are decoded once."""
    rejections: list[Rejection] = []
    byte_copies: list[tuple[SourceFile, SourceFile]] = []  # (a copy, the first file with its bytes)
    to_decode: list[SourceFile] = []
    first_by_file_hash: dict[str, SourceFile] = {}
    for f in files:
        if Path(f.relpath).suffix.lower() not in modality.extensions:
            rejections.append(
                Rejection(f.relpath, f.sha256, "scan", "UnsupportedExtension",
                          f"{Path(f.relpath).suffix or 'no extension'} is not one of {sorted(modality.extensions)}")
            )
        elif f.size == 0:
            rejections.append(Rejection(f.relpath, f.sha256, "read", "EmptyFile", "the file has zero bytes"))
        elif f.sha256 in first_by_file_hash:
            byte_copies.append((f, first_by_file_hash[f.sha256]))  # its verdict is the first copy's
        else:
            first_by_file_hash[f.sha256] = f
            to_decode.append(f)

    results = _decode_in_workers(modality, config, to_decode, settings, progress)

    accepted: list[tuple[SourceFile, DecodedFile]] = []
    duplicates: list[dict] = []
    # each decoded file's verdict: its rejection, or the relpath of the file whose rows stand for it
    verdicts: dict[SourceFile, Rejection | str] = {}
    first_by_content: dict[str, str] = {}
    for f, result in zip(to_decode, results):  # in path order, so the first copy always wins
        if isinstance(result, ItemFailure):
            # a decoder's message may quote the real path, surrogate escapes and all
            message = displayable(result.message)
            verdicts[f] = Rejection(f.relpath, f.sha256, result.stage, result.error_type, message)
            rejections.append(verdicts[f])
        elif result.content_hash in first_by_content:
            verdicts[f] = first_by_content[result.content_hash]
            duplicates.append({"source_path": f.relpath, "duplicate_of": verdicts[f]})
        else:
            verdicts[f] = first_by_content[result.content_hash] = f.relpath
            accepted.append((f, result))
    for copy, original in byte_copies:
        # A copy of a rejected file is as bad as the file (the reject rate must count it), and
        # a copy of a content duplicate points at the kept file, never at a file without rows.
        verdict = verdicts[original]
        if isinstance(verdict, Rejection):
            message = f"a byte-identical copy of {original.relpath}, which was rejected because: {verdict.message}"
            rejections.append(Rejection(copy.relpath, copy.sha256, verdict.stage, verdict.error_type, message))
        else:
            duplicates.append({"source_path": copy.relpath, "duplicate_of": verdict})
    rejections.sort(key=lambda r: r.source_path)
    duplicates.sort(key=lambda d: d["source_path"])
    return rejections, duplicates, accepted


def _decode_in_workers(modality, config, to_decode: Sequence[SourceFile], settings: IngestSettings, progress) -> list:
    """The DecodedFile or ItemFailure of each file, in the order given."""
    results: dict[int, Any] = {}
    last_report = time.monotonic()
    items = [DecodeTask(f.path, f.relpath, config) for f in to_decode]
    for index, result in map_isolated(
        modality.decode, items, workers=settings.workers, timeout_s=settings.timeout_s,
        chunk_size=settings.chunk_size or modality.chunk_size,
    ):
        results[index] = result
        if time.monotonic() - last_report > 10:
            progress(f"{modality.name}: decoded {len(results)}/{len(items)} files")
            last_report = time.monotonic()

    crashed = [r for r in results.values() if isinstance(r, ItemFailure) and r.error_type == "WorkerCrashed"]
    if results and len(crashed) == len(results):
        # Not a verdict on the files: the workers could not run at all. Saving this as a
        # corpus version would make the next run reuse it instead of trying again.
        raise RuntimeError(f"every decoder process died ({crashed[0].message}); nothing was saved")
    return [results[index] for index in range(len(items))]


def _signature_of(source: SourceFile, decoded: DecodedFile) -> FileSignature:
    return FileSignature(source.relpath, source.sha256, decoded.signatures, decoded.work_keys, decoded.time_spans)


def _split_line(corpus: str, summary: dict) -> str:
    largest = summary["largest_group"]
    leakage = ", ".join(f"{table} {value['leaked']}/{value['checked']}" for table, value in summary["leakage"].items())
    text = f"{corpus}: {summary['groups']} groups by {summary['group_by']}"
    if largest:
        text += f", the largest {largest['files']} files (e.g. {largest['example']})"
    if summary["time_split"]:
        text += "; split by time in " + ", ".join(name for name, s in summary["strata"].items() if s["split"] == "time")
    return text + (f"; held-out rows also in training: {leakage}" if leakage else "")


def _write_tables(specs, accepted, plan: SplitPlan, time_table: str | None, settings, version_dir: Path,
                  out_dir: Path) -> dict:
    tables = {}
    for spec in specs:
        full_spec = TableSpec(spec.name, spec.tensor, {**spec.columns, **LINEAGE_COLUMNS})
        tensors, columns = [], {name: [] for name in full_spec.columns}
        for index, (source, decoded) in enumerate(accepted):
            rows = decoded.tables.get(spec.name)
            if rows is None or len(rows) == 0:
                continue
            count = len(rows)
            if spec.tensor is not None:
                tensors.append(rows.tensors)
            for name in spec.columns:
                columns[name].extend(rows.columns[name])
            columns["source_path"].extend([source.relpath] * count)
            columns["sha256"].extend([source.sha256] * count)
            columns["split"].extend(plan.splits(index, spec.name, count, time_table))
            columns["group"].extend([plan.group[index]] * count)
        if spec.tensor is None:
            stacked = None
        elif tensors:
            stacked = np.concatenate(tensors)
        else:
            stacked = np.empty((0, *spec.tensor.shape), dtype=spec.tensor.dtype)
        table = tensor_table(full_spec, stacked, columns)
        shards: list[ShardInfo] = write_shards(table, full_spec, version_dir, out_dir, settings.shard_megabytes)
        tensor = spec.tensor
        tables[spec.name] = {
            "tensor": {"column": tensor.name, "shape": list(tensor.shape), "dtype": tensor.dtype} if tensor else None,
            "columns": [field.name for field in full_spec.schema()],
            "rows": len(table),
            "shards": [shard.to_json() for shard in shards],
        }
    return tables


def _write_plain(rows: list[dict], schema: pa.Schema, path: Path, out_dir: Path) -> dict:
    write_parquet(pa.Table.from_pylist(rows, schema=schema), path)
    return {"path": str(path.relative_to(out_dir)), "rows": len(rows), "bytes": path.stat().st_size}


def _write_rejected(rejections: list[Rejection], path: Path, out_dir: Path) -> dict:
    return _write_plain([asdict(r) for r in rejections], REJECTED_SCHEMA, path, out_dir)


def _version_folders(manifest: dict | None) -> set[str]:
    """The v-* folders a manifest's shards and rejected table lie in (one, unless hand-edited)."""
    if not manifest:
        return set()
    named = [shard for table in manifest["tables"].values() for shard in table["shards"]]
    named += [manifest[name] for name in _SIDE_TABLES if name in manifest]
    return {Path(entry["path"]).parts[0] for entry in named}


def _remove_old_versions(out_dir: Path, committed: dict, replaced: dict | None) -> None:
    """Delete every v-* folder except the one just committed and the one the replaced manifest named.

    A reader that loaded the replaced manifest before the commit still finds all its shards;
    a reader of any older manifest has had a whole ingest's time to finish. Everything else
    goes, whatever its age: half-written folders of killed runs were never named by a
    manifest, so no reader can hold them (judging by mtime would keep those and delete the
    previous committed version instead).
    """
    keep = _version_folders(committed) | _version_folders(replaced)
    for folder in out_dir.glob("v-*"):
        if folder.is_dir() and folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def read_rejections(path: Path) -> list[Rejection]:
    import pyarrow.parquet as pq

    return [Rejection(**row) for row in pq.read_table(path).to_pylist()]
