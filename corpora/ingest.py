"""The ingest engine shared by every corpus: scan, decode in workers, dedupe, shard, manifest.

A modality (images, MIDI, video) supplies only how one file becomes rows; everything a
corpus promises (atomic shards, a rejected-files table, accounting of every file, a
manifest whose hash is the data version, no work when nothing changed) lives here once.
"""
from __future__ import annotations

import functools
import gc
import hashlib
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import repeat
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from common.atomic import atomic_write_json, remove_stale_temporaries
from common.hashing import sha256_bytes, sha256_file, sha256_json
from corpora.grouping import (HELDOUT, FileSignatures, LastGroups, SplitPlan, SplitSettings, block_sums,
                              near_owner_pairs, plan_split, rule_key)
from corpora.row_cache import CachedFile, Placement, RowCache, cache_key
from corpora.scanning import SourceFile, displayable, load_hashes, part_of, remember_hashes, scan, scan_with_stats
from corpora.shards import ShardWriter, TableSpec, arrow_array, arrow_records, arrow_table, read_parquet, write_parquet
from corpora.workers import ItemFailure, map_isolated, start_fork_server, stop_fork_server
from provenance.licences import Licences, count_licences, is_licence_file, licence_name, read_licences

MANIFEST_NAME = "manifest.json"
REJECTED_TABLE = "rejected"
LINEAGE_COLUMNS: dict[str, pa.DataType] = {
    "source_path": pa.string(),
    "sha256": pa.string(),
    "split": pa.string(),  # train, heldout, or gap (rows left out between the sides of a time split)
    "group": pa.string(),  # the work this row belongs to: a group never straddles the split
    # the source file's licence (provenance.licences), joined here rather than cached with the rows: it
    # follows the file's path, and the row cache knows files by content
    "licence": pa.dictionary(pa.int32(), pa.string()),
}
# Part of every shard's key: raise it when the same rows and lineage would give other bytes
# (a column, a Parquet option), so no shard of the old layout is taken over.
SHARD_FORMAT = 1
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
    """Rows for one table: a stacked (N, *shape) tensor array (None for a plain table) and
    columns, numbers best as numpy arrays (sent from a decoder and stacked whole, not per value)."""

    tensors: np.ndarray | None
    columns: dict[str, Sequence] = field(default_factory=dict)

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
    min_heldout_groups: int = SplitSettings.min_heldout_groups
    # Decoded files are kept in batches of at most this many files or megabytes of rows: what a
    # killed ingest can lose, and (times the cache's open batches) what reading them back holds.
    batch_files: int = 512
    batch_megabytes: int = 16
    # From this many files on, the split's memory outgrows that of the decoders' idle fork server
    # (about 70 MB of imports), which is then stopped once decoding is done; below it the server
    # stays up for the next ingest in this process, which would wait half a second to start it.
    stop_decoders_from_files: int = 20_000

    def split_settings(self) -> SplitSettings:
        return SplitSettings(heldout_percent=self.heldout_percent, group_by=self.group_by,
                             time_split_below_groups=self.time_split_below_groups,
                             min_heldout_groups=self.min_heldout_groups)


@dataclass(frozen=True)
class DecodeTask:
    """One file for a worker: where it is, its path inside the corpus, and the corpus config."""

    path: str
    relpath: str
    config: Any
    sha256: str = ""  # the content the scan saw: a file that changed since is not decoded under it


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
    decoded_files: int = 0  # decoded by this run; the others' rows came from the row cache

    @property
    def counts(self) -> dict:
        return self.manifest["counts"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def shard_paths(self, table: str) -> list[Path]:
        return shard_paths(self.manifest_path, table)


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


@contextmanager
def _cyclic_gc(enabled: bool) -> Iterator[None]:
    """Python's cyclic garbage collector on or off for a while, then as it was."""
    was_enabled = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        yield
    finally:
        (gc.enable if was_enabled else gc.disable)()


@contextmanager
def _arrow_pool(pool: pa.MemoryPool) -> Iterator[None]:
    """Arrow's default memory pool set to `pool` for a while, then as it was (a buffer is freed
    to the pool that allocated it, whatever the default is by then)."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def _as_an_ingest_runs(function):
    # An ingest holds a few objects per file of the corpus and makes no reference cycles, so the
    # cyclic collector's passes over them are pure cost: about a tenth of a one-file change's CPU.
    # The decoding loop turns it on again (see _decode_into_cache). Arrow's default pool
    # (mimalloc) keeps the pages of the cache tables and row groups an ingest reads and frees one
    # after another; the system allocator gives them back: at 40,000 MIDI files the main process
    # peaked at 196 MB against 226 MB, at no cost in CPU (docs/corpora-at-scale.md).
    @functools.wraps(function)
    def as_an_ingest(*args, **kwargs):
        with _cyclic_gc(False), _arrow_pool(pa.system_memory_pool()):
            return function(*args, **kwargs)
    return as_an_ingest


@_as_an_ingest_runs
def ingest(
    modality: Modality,
    config: Any,
    raw_dir: str | Path,
    out_dir: str | Path,
    settings: IngestSettings = IngestSettings(),
    progress: Callable[[str], None] = log.info,
) -> IngestReport:
    """Turn every file under `raw_dir` into shards under `out_dir`, or reuse the last result.

    Only files the row cache has no verdict for (under this code version and config) are
    decoded; the shards are then written from the cache in path order, one shard at a time.
    """
    started = time.monotonic()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    manifest_path = out_dir / MANIFEST_NAME
    config_json = asdict(config)
    specs = modality.table_specs(config)
    cache = _row_cache(modality, config, out_dir)

    licences = read_licences(raw_dir) if raw_dir.is_dir() else Licences()
    known_hashes = load_hashes(cache.hashes_file)
    scan_started_ns = time.time_ns()
    scanned = scan_with_stats(raw_dir, known_hashes, keep=_corpus_file)  # none when raw_dir is missing
    files = scanned.files
    # files read afresh (new, changed, or changed just before the last scan) are the likely decodes:
    # the decoders' fork server then starts now, its imports running beside the rest of this
    if scanned.fresh:
        start_fork_server(*_decoder(modality))
    remember_hashes(scanned, cache.hashes_file, known_hashes, scan_started_ns)
    del known_hashes, scanned  # the memo's columns, and the stats: not held through the rest
    fingerprint = sha256_json(
        {
            "code_version": modality.code_version,
            "config": config_json,
            "split": asdict(settings.split_settings()),
            "shard_megabytes": settings.shard_megabytes,
            "files": _files_digest(files),
            "licences": licences.to_json(),
        }
    )
    previous = load_manifest(manifest_path)
    if _manifest_is_usable(previous, out_dir, fingerprint):
        progress(f"{modality.name}: {len(files)} files unchanged, reusing version {previous['version'][:12]}")
        rejections = read_rejections(out_dir / previous["rejected"]["path"])
        return IngestReport(modality.name, previous, manifest_path, True, time.monotonic() - started, rejections)

    known = cache.load_index()
    rejections, duplicates, accepted, decoded = _sort_files(modality, config, files, settings, cache, known, progress)
    if len(files) >= settings.stop_decoders_from_files:
        stop_fork_server()
    near_memo = cache.load_near_memo()
    # each accepted file's path, hash and place in the cache, shared by the split, the shards and the groups table
    relpaths, sha256s = [source.relpath for source, _ in accepted], [source.sha256 for source, _ in accepted]
    placement = Placement([cached for _, cached in accepted])
    notices = [{"source_path": source.relpath, "sha256": source.sha256, "stage": stage, "kind": kind,
                "message": message} for source, cached in accepted for stage, kind, message in cached.notices]
    seen, live = len(files), {f.sha256 for f in files if f.sha256}
    del files, accepted  # a tuple per file of the corpus: not held through the split, the largest phase
    grouping_key = rule_key(modality.grouping, settings.split_settings())
    last = _last_groups(previous, out_dir, sha256s, known, cache, modality.grouping, settings.group_by, grouping_key)
    if last is not None:
        progress(f"{modality.name}: the groups of version {previous['version'][:12]} kept where no file left them "
                 f"({int((last.group >= 0).sum())} of its files are here)")
    plan = plan_split(_signatures(relpaths, sha256s, placement, cache), modality.grouping,
                      settings.split_settings(), near_memo, last)
    del last
    progress(_split_line(modality.name, plan.summary))

    version_dir = out_dir / f"v-{fingerprint[:16]}"
    shutil.rmtree(version_dir, ignore_errors=True)  # leftovers of a killed run with the same input
    version_dir.mkdir(parents=True)
    matched = [licences.rule_for(relpath) for relpath in relpaths]  # one glob match per file
    licence_of = [licence_name(rule) for rule in matched]
    shard_files = _ShardFiles(placement, relpaths, sha256s, licence_of, plan)
    tables = {spec.name: _write_table(spec, shard_files, modality.grouping.time_table, cache, settings, version_dir,
                                      out_dir, previous) for spec in specs}
    rejected_info = _write_rejected(rejections, version_dir / f"{REJECTED_TABLE}.parquet", out_dir)
    notices_info = _write_plain(notices, NOTICES_SCHEMA, version_dir / f"{NOTICES_TABLE}.parquet", out_dir)
    groups = arrow_table([relpaths, sha256s, plan.group, plan.stratum, plan.file_split], GROUPS_SCHEMA)
    groups_info = _write_columns(groups, version_dir / f"{GROUPS_TABLE}.parquet", out_dir)

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
            "seen": seen,
            "ingested": len(relpaths),
            "rejected": len(rejections),
            "duplicates": len(duplicates),
            "groups": plan.summary["groups"],
            "notices": len(notices),
            "reject_rate": len(rejections) / seen if seen else 0.0,
            "rows": {name: table["rows"] for name, table in tables.items()},
        },
        "tables": tables,
        "rejected": rejected_info,
        "notices": notices_info,
        "groups": groups_info,
        "grouping": plan.summary,
        "duplicates": duplicates,
        "licences": _licences_section(licences, matched, licence_of, plan),
    }
    manifest["version"] = sha256_json(manifest)
    manifest["created_at"] = datetime.now(timezone.utc).isoformat()
    replaced = load_manifest(manifest_path)  # read again: what a reader may hold until this commit
    atomic_write_json(manifest_path, manifest)  # the commit point: readers now see the new shards
    _remove_old_versions(out_dir, manifest, replaced)
    cache.save_near_memo(near_memo)
    cache.save_split_basis({"version": manifest["version"], "grouping": grouping_key})
    cache.collect_garbage(cache.compact(live, known, settings.batch_files, settings.batch_megabytes))

    counts = manifest["counts"]
    progress(
        f"{modality.name}: {counts['seen']} seen = {counts['ingested']} ingested + "
        f"{counts['rejected']} rejected + {counts['duplicates']} duplicates; rows {counts['rows']}; "
        f"licences {manifest['licences']['files']}; {decoded} files decoded by this run"
    )
    return IngestReport(modality.name, manifest, manifest_path, False, time.monotonic() - started, rejections,
                        decoded)


def _files_digest(files: Sequence[SourceFile]) -> str:
    """A hash of every file's path and content hash, in order: one string hashed, not a JSON list
    of two strings per file (a fifth of a second at 176,000 files). Unambiguous: no path holds a
    NUL, and a content hash is empty or 64 hex digits, never a newline."""
    return sha256_bytes("\n".join(map("\0".join, map(attrgetter("relpath", "sha256"), files))).encode())


def _corpus_file(relpath: str) -> bool:
    return not is_licence_file(relpath)


def _licences_section(licences: Licences, matched: list, licence_of: list[str], plan: SplitPlan) -> dict:
    """The manifest's account of licences: the table read, and the ingested files per licence, all
    of them and those with rows in the training split (a file split by time has some)."""
    return {
        **licences.to_json(),
        "files": count_licences(licence_of),
        "train_files": count_licences(licence for licence, split in zip(licence_of, plan.file_split)
                                      if split != HELDOUT),
        "terms": Licences.terms(matched),
    }


def _row_cache(modality: Modality, config: Any, out_dir: Path) -> RowCache:
    return RowCache(out_dir, cache_key(modality.code_version, asdict(config)), modality.table_specs(config))


def _suffix(relpath: str) -> str:
    """`Path(relpath).suffix`, without building a Path per file of the corpus."""
    name = relpath.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def _refusal(f: SourceFile, modality: Modality) -> tuple[str, str, str] | None:
    """(stage, error type, message) for a file refused without decoding; None for one to decode."""
    if f.problem is not None:
        return f.problem
    suffix = _suffix(f.relpath)
    if suffix.lower() not in modality.extensions:
        return ("scan", "UnsupportedExtension", f"{suffix or 'no extension'} is not one of {sorted(modality.extensions)}")
    if f.size == 0:
        return ("read", "EmptyFile", "the file has zero bytes")
    return None


@dataclass(frozen=True)
class PartReport:
    files: int  # files of the corpus in this part
    decoded: int  # decoded by this run (the rest had a verdict in the row cache already)
    elapsed_s: float


def decode_part(
    modality: Modality,
    config: Any,
    raw_dir: str | Path,
    out_dir: str | Path,
    part: int,
    parts: int,
    settings: IngestSettings = IngestSettings(),
    progress: Callable[[str], None] = log.info,
) -> PartReport:
    """Decode into the row cache the files of one of `parts` stable buckets of the corpus, and
    write nothing else: parts run as separate processes (or pods) side by side, and `ingest`
    afterwards finds every file cached and only splits and writes the shards."""
    started = time.monotonic()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    cache = _row_cache(modality, config, out_dir)
    files = scan(raw_dir, load_hashes(cache.hashes_file),
                 keep=lambda relpath: _corpus_file(relpath) and part_of(relpath, parts) == part)
    known = cache.load_index()
    # one file per content: byte-identical copies share their verdict
    to_decode = list({f.sha256: f for f in files if _refusal(f, modality) is None and f.sha256 not in known}.values())
    progress(f"{modality.name}: part {part} of {parts}: {len(files)} files, decoding {len(to_decode)}")
    _decode_into_cache(modality, config, to_decode, settings, cache, known, progress)
    return PartReport(len(files), len(to_decode), time.monotonic() - started)


def _sort_files(modality, config, files: Sequence[SourceFile], settings: IngestSettings, cache: RowCache,
                known: dict[str, CachedFile], progress):
    """Sort every file into rejected, duplicate or accepted (in path order, so the first copy
    always wins), decoding only what the cache has no verdict for; byte-identical copies are
    decoded once. Returns the three lists and how many files this run decoded."""
    rejections: list[Rejection] = []
    byte_copies: list[tuple[SourceFile, SourceFile]] = []  # (a copy, the first file with its bytes)
    candidates: list[SourceFile] = []
    first_by_file_hash: dict[str, SourceFile] = {}
    endings = tuple(modality.extensions)
    for f in files:
        # most files pass this test without `_refusal`'s steps: a name the scan lists never
        # starts with a dot, so a name ending in an extension has it as its suffix
        if (f.problem is not None or not f.size or not f.relpath.lower().endswith(endings)) and (
                refusal := _refusal(f, modality)) is not None:
            rejections.append(Rejection(f.relpath, f.sha256, *refusal))
        elif f.sha256 in first_by_file_hash:
            byte_copies.append((f, first_by_file_hash[f.sha256]))  # its verdict is the first copy's
        else:
            first_by_file_hash[f.sha256] = f
            candidates.append(f)

    to_decode = [f for f in candidates if f.sha256 not in known]
    progress(f"{modality.name}: decoding {len(to_decode)} files"
             + (f" ({len(candidates) - len(to_decode)} more from the row cache)" if len(to_decode) < len(candidates)
                else ""))
    transient = _decode_into_cache(modality, config, to_decode, settings, cache, known, progress)

    accepted: list[tuple[SourceFile, CachedFile]] = []
    duplicates: list[dict] = []
    # each candidate's verdict: its rejection, or the relpath of the file whose rows stand for it
    verdicts: dict[str, Rejection | str] = {}
    first_by_content: dict[str, str] = {}
    for f in candidates:
        cached = known.get(f.sha256)
        if cached is None or not cached.accepted:
            stage, error_type, message = transient[f.sha256] if cached is None else (
                cached.stage, cached.error_type, cached.message)
            verdicts[f.sha256] = Rejection(f.relpath, f.sha256, stage, error_type, message)
            rejections.append(verdicts[f.sha256])
        elif cached.content_hash in first_by_content:
            verdicts[f.sha256] = first_by_content[cached.content_hash]
            duplicates.append({"source_path": f.relpath, "duplicate_of": verdicts[f.sha256]})
        else:
            verdicts[f.sha256] = first_by_content[cached.content_hash] = f.relpath
            accepted.append((f, cached))
    for copy, original in byte_copies:
        # A copy of a rejected file is as bad as the file (the reject rate must count it), and
        # a copy of a content duplicate points at the kept file, never at a file without rows.
        verdict = verdicts[original.sha256]
        if isinstance(verdict, Rejection):
            message = f"a byte-identical copy of {original.relpath}, which was rejected because: {verdict.message}"
            rejections.append(Rejection(copy.relpath, copy.sha256, verdict.stage, verdict.error_type, message))
        else:
            duplicates.append({"source_path": copy.relpath, "duplicate_of": verdict})
    rejections.sort(key=lambda r: r.source_path)
    duplicates.sort(key=lambda d: d["source_path"])
    return rejections, duplicates, accepted, len(to_decode)


class RunNearSearch:
    """Compares each committed batch's thumbnails with those this run decoded before, and keeps
    the pairs beside the batch (RowCache.save_batch_near): the split then compares only the
    files outside the largest set compared so far, so a rerun after a kill does not redo the
    comparisons of the batches the killed run finished.

    The comparisons run on a thread of their own, a batch at a time in commit order, beside the
    decoding's bookkeeping (numpy's products release the GIL); at most `QUEUED_BATCHES` batches'
    thumbnails wait for it. A killed run keeps the pairs of the batches it compared, a prefix of
    those it committed; a search that fails lets the decoding finish and `close` raises."""

    QUEUED_BATCHES = 2

    def __init__(self, grouping: Grouping, cache: RowCache):
        self.grouping, self.cache = grouping, cache
        self.run = uuid.uuid4().hex[:16]
        self.sha256s: list[str] = []
        self.rows = {table: _GrowingRows() for table in grouping.near_tables}
        # the rows' block sums, kept as the rows grow: recomputing them for every batch made
        # the search quadratic in more than the comparisons
        self.blocks = {table: _GrowingRows() for table in grouping.near_tables}
        self._batches: queue.Queue = queue.Queue(maxsize=self.QUEUED_BATCHES)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._compare_batches, name="near-search", daemon=True)
        if self.rows:
            self._thread.start()

    def on_commit(self, batch: str, decoded: list[tuple[str, DecodedFile]]) -> None:
        if self.rows:  # the thumbnails only: the batch's rows are not held while it waits
            self._batches.put((batch, [(sha, result.signatures) for sha, result in decoded]))

    def close(self) -> None:
        """Wait until every committed batch is compared; raise what stopped the comparisons."""
        if self._thread.is_alive():
            self._batches.put(None)
            self._thread.join()
        if self._failure is not None:  # the decoding went on: its batches are kept for the rerun
            raise RuntimeError(f"the near-duplicate search stopped: {self._failure!r}") from self._failure

    def _compare_batches(self) -> None:
        while (item := self._batches.get()) is not None:
            if self._failure is None:  # after a failure, batches are taken and dropped: no put waits forever
                try:
                    self._compare(*item)
                except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                    self._failure = exc

    def _compare(self, batch: str, signatures: list[tuple[str, dict[str, np.ndarray]]]) -> None:
        first = len(self.sha256s)
        self.sha256s += [sha for sha, _ in signatures]
        found = []
        for table, known in self.rows.items():
            parts = [(first + i, signature[table]) for i, (_, signature) in enumerate(signatures)
                     if len(signature.get(table, ()))]
            if not parts:
                continue
            values = np.concatenate([value for _, value in parts])
            owners = np.repeat([owner for owner, _ in parts], [len(value) for _, value in parts])
            blocks = block_sums(values)
            pairs = near_owner_pairs(values, owners, *known.filled(), self.grouping.near_rms,
                                     new_blocks=blocks, old_blocks=self.blocks[table].filled()[0])
            known.append(values, owners)
            self.blocks[table].append(blocks, owners)
            found += [(self.run, table, sha, "") for sha, _ in signatures]
            found += [(self.run, table, self.sha256s[a], self.sha256s[b]) for a, b in pairs]
        self.cache.save_batch_near(batch, found)


class _GrowingRows:
    """Rows appended batch by batch into buffers that double, so appending stays linear."""

    def __init__(self):
        self.values: np.ndarray | None = None
        self.owners = np.empty(0, np.int64)
        self.count = 0

    def filled(self) -> tuple[np.ndarray, np.ndarray]:
        if self.values is None:
            return np.empty((0, 0), np.uint8), self.owners
        return self.values[: self.count], self.owners[: self.count]

    def append(self, values: np.ndarray, owners: np.ndarray) -> None:
        needed = self.count + len(values)
        if self.values is None or needed > len(self.values):
            size = max(needed, 2 * self.count, 1024)
            grown = np.empty((size, *values.shape[1:]), values.dtype)
            grown_owners = np.empty(size, np.int64)
            if self.values is not None:
                grown[: self.count], grown_owners[: self.count] = self.filled()
            self.values, self.owners = grown, grown_owners
        self.values[self.count : needed], self.owners[self.count : needed] = values, owners
        self.count = needed


class _DecodeTasks(Sequence):
    """The decode task of each file, built when a worker is sent it: a corpus's worth of tasks
    (and paths) at once was the largest transient of a fresh ingest's main process."""

    def __init__(self, files: Sequence[SourceFile], config: Any):
        self.files, self.config = files, config

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> DecodeTask:
        f = self.files[index]
        return DecodeTask(f.path, f.relpath, self.config, f.sha256)


def decode_checked(decode: Callable[[DecodeTask], DecodedFile], task: DecodeTask) -> DecodedFile:
    """`decode(task)`, refused when the file no longer has the content the scan hashed: its
    rows would be kept under the wrong hash."""
    decoded = decode(task)
    if task.sha256 and sha256_file(task.path) != task.sha256:
        raise Rejected("the file changed while it was being read; the next ingest reads it again",
                       stage="read", error_type="FileChanged")
    return decoded


def _decoder(modality: Modality) -> tuple[Callable[[DecodeTask], DecodedFile], list[str]]:
    """The workers' function and the modules their fork server imports first."""
    return functools.partial(decode_checked, modality.decode), [modality.decode.__module__, __name__]


def _decode_into_cache(modality, config, to_decode: Sequence[SourceFile], settings: IngestSettings,
                       cache: RowCache, known: dict[str, CachedFile], progress) -> dict[str, tuple[str, str, str]]:
    """Decode `to_decode` in worker processes, committing results to the cache in batches as
    they arrive (`known` gains them). Returns the failures the cache does not keep."""
    near_search = RunNearSearch(modality.grouping, cache) if settings.group_by == "work" else None
    writer = cache.writer(settings.batch_files, settings.batch_megabytes, near_search and near_search.on_commit)
    transient: dict[str, tuple[str, str, str]] = {}
    crashed = done = 0
    last_report = time.monotonic()
    items = _DecodeTasks(to_decode, config)
    # on while decoding: a long decode's worker messages and futures are collected as it goes
    with _cyclic_gc(True):
        try:
            decode, preload = _decoder(modality)
            for index, result in map_isolated(
                decode, items, workers=settings.workers, timeout_s=settings.timeout_s,
                chunk_size=settings.chunk_size or modality.chunk_size, preload=preload,
            ):
                sha = to_decode[index].sha256
                done += 1
                if isinstance(result, ItemFailure):
                    # a decoder's message may quote the real path, surrogate escapes and all
                    reason = (result.stage, result.error_type, displayable(result.message))
                    crashed += result.error_type == "WorkerCrashed"
                    if not writer.add_rejected(sha, *reason):
                        transient[sha] = reason
                else:
                    writer.add_decoded(sha, result)
                if time.monotonic() - last_report > 10:
                    progress(f"{modality.name}: decoded {done}/{len(items)} files")
                    last_report = time.monotonic()
        finally:
            writer.flush()  # a run stopped by an error or a signal keeps what it finished
            known.update(writer.committed)
            if near_search is not None:
                near_search.close()
    if items and crashed == len(items):
        # Not a verdict on the files: the workers could not run at all. Saving this as a
        # corpus version would make the next run reuse it instead of trying again.
        raise RuntimeError(f"every decoder process died ({next(iter(transient.values()))[2]}); nothing was saved")
    return transient


def _signatures(relpaths: list[str], sha256s: list[str], placement: Placement, cache: RowCache) -> FileSignatures:
    """The split's signatures of the accepted files, read back from the cache into a few arrays."""
    columns, time_spans = cache.stacked_arrays(placement)
    return FileSignatures(
        relpaths, sha256s,
        {name.split(":", 1)[1]: value for name, value in columns.items() if name.startswith("signature:")},
        columns.get("work_keys"), time_spans)


def _last_groups(previous: dict | None, out_dir: Path, sha256s: list[str], known: dict[str, CachedFile],
                 cache: RowCache, grouping: Grouping, group_by: str, grouping_key: str) -> LastGroups | None:
    """The groups of the version before, for the split to keep (see LastGroups): None unless that
    version's split was made under the same rule, its removed files are still in the cache, and
    there are links to keep (near pairs have a memo of their own)."""
    if group_by != "work" or not (grouping.exact_tables or grouping.overlap is not None):
        return None
    if not previous or cache.load_split_basis() != {"version": previous["version"], "grouping": grouping_key}:
        return None
    try:
        table = read_parquet(out_dir / previous["groups"]["path"], columns=["sha256", "group"])
    except (OSError, pa.ArrowInvalid):
        return None
    old_sha256s = table.column("sha256").to_pylist()
    numbers: dict[str, int] = {}
    old_group = np.fromiter((numbers.setdefault(name, len(numbers)) for name in table.column("group").to_pylist()),
                            np.int64, table.num_rows)
    row_of = dict(zip(old_sha256s, range(len(old_sha256s))))
    rows = np.fromiter(map(row_of.get, sha256s, repeat(-1)), np.int64, len(sha256s))
    del row_of
    here = np.zeros(len(old_sha256s), bool)
    here[rows[rows >= 0]] = True
    removed = [known.get(old_sha256s[row]) for row in np.flatnonzero(~here).tolist()]
    if None in removed:
        return None
    removed_work_keys = None
    if removed and grouping.overlap is not None:
        removed_work_keys = cache.stacked_arrays(Placement(removed))[0].get("work_keys")
    return LastGroups(np.where(rows >= 0, old_group[rows], -1), np.unique(old_group[~here]), removed_work_keys)


def _split_line(corpus: str, summary: dict) -> str:
    largest = summary["largest_group"]
    leakage = ", ".join(f"{table} {value['leaked']}/{value['checked']}" for table, value in summary["leakage"].items())
    text = f"{corpus}: {summary['groups']} groups by {summary['group_by']}"
    if largest:
        text += f", the largest {largest['files']} files (e.g. {largest['example']})"
    if summary["time_split"]:
        text += "; split by time in " + ", ".join(name for name, s in summary["strata"].items() if s["split"] == "time")
    return text + (f"; held-out rows also in training: {leakage}" if leakage else "")


class _ShardFiles:
    """The accepted files as the shard writer reads them, in columns built once for every table:
    each file's lineage (path, hash, group, licence) and its cache batch and position, and a
    digest of what the file contributes to a shard's bytes. A Python object per file and table
    (a span, a dict of lineage, a key's text) was most of a one-file change's writing."""

    def __init__(self, placement: Placement, relpaths: list[str], sha256s: list[str], licence_of: list[str],
                 plan: SplitPlan):
        self.plan = plan
        self.lineage = {"source_path": relpaths, "sha256": sha256s, "group": plan.group, "licence": licence_of}
        self.placement = placement
        # the draw of `_may_end_shard`: the first 13 hex digits of the file's hash
        self.draw = np.fromiter((int(sha[:13], 16) for sha in sha256s), np.int64, len(sha256s))
        # NUL-separated: no path, hash, group, licence or split holds one
        self.digest = np.frombuffer(b"".join(
            hashlib.blake2b("\0".join(values).encode(), digest_size=16).digest()
            for values in zip(*self.lineage.values(), plan.file_split)), np.uint8).reshape(-1, 16)

    def __len__(self) -> int:
        return len(self.placement)

    def spans(self, table: str) -> tuple[np.ndarray, np.ndarray]:
        """Each file's first row in its batch's `table` and its row count there (0: none)."""
        first, count = np.zeros(len(self), np.int64), np.zeros(len(self), np.int64)
        placement = self.placement
        for layout, files in zip(placement.batch_layouts, placement.files_of_batch):
            if table in layout.names:
                first[files], count[files] = layout.spans[placement.position[files], layout.names.index(table)].T
        return first, count

    def splits(self, files: np.ndarray, counts: np.ndarray, table: str, time_table: str | None
               ) -> tuple[list[str], list[int]]:
        """The split of each run of rows of `files` (with `counts` rows each), and its length."""
        values, lengths = [], []
        for index, count in zip(files.tolist(), counts.tolist()):
            for split, rows in self.plan.split_runs(index, table, count, time_table):
                values.append(split)
                lengths.append(rows)
        return values, lengths


def _shard_bounds(count: np.ndarray, draw: np.ndarray, shard_limit: int) -> list[tuple[int, int]]:
    """The files of each shard as [start, stop) ranges of file indexes. A shard ends before a file
    that would overfill it, and after a file chosen by `_may_end_shard`: a rule of the file, not of
    its place, so a change moves the boundaries of the shards around it only."""
    least = max(shard_limit // 4, 1)
    may_end = _may_end_shard(draw, count, least).tolist()
    bounds, start, rows = [], None, 0
    for index, rows_of_file in enumerate(count.tolist()):
        if not rows_of_file:
            continue
        if start is not None and rows + rows_of_file > shard_limit:
            bounds.append((start, index))
            start, rows = None, 0
        if start is None:
            start = index
        rows += rows_of_file
        if rows >= least and may_end[index]:  # never below a quarter of the limit
            bounds.append((start, index + 1))
            start, rows = None, 0
    if start is not None:
        bounds.append((start, len(count)))
    return bounds


def _may_end_shard(draw: np.ndarray, count: np.ndarray, least: int) -> np.ndarray:
    """Whether a shard past `least` rows ends after each file: with a chance of the file's rows in
    `least`, drawn from the first 13 hex digits of its hash (shards average about half the limit)."""
    return draw < count / least * 16**13


def repeated_array(values: list, counts: list[int], kind: pa.DataType) -> pa.Array:
    """values[i] repeated counts[i] times, as an Arrow array of `kind`: built from the distinct
    runs and repeated in Arrow, not a Python object per row."""
    return arrow_array(values, kind).take(arrow_array(np.repeat(np.arange(len(values)), counts), pa.int64()))


def _write_table(spec: TableSpec, files: _ShardFiles, time_table: str | None, cache: RowCache,
                 settings: IngestSettings, version_dir: Path, out_dir: Path, previous: dict | None) -> dict:
    """Stream one table's rows from the cache into shards, in path order with their lineage,
    taking over the shards of the `previous` manifest that would come out the same.

    A shard's key is a hash of what makes its bytes: the cache key, the table, and each of its
    files' lineage digest and split runs; a shard with a known key is linked, not written again.
    A written shard's rows are read a row group's worth of files at a time, consecutive files
    whose rows lie side by side in one cache batch as one slice.
    """
    full_spec = TableSpec(spec.name, spec.tensor, {**spec.columns, **LINEAGE_COLUMNS})
    schema = full_spec.schema()
    writer = ShardWriter(full_spec, version_dir, out_dir, settings.shard_megabytes)
    previous_shards = (previous or {}).get("tables", {}).get(spec.name, {}).get("shards", [])
    known_shards = {shard["key"]: shard for shard in previous_shards if shard.get("key")}
    # the schema serialized, not printed: its text shortens long metadata such as a tensor's shape
    schema_hash = hashlib.sha256(schema.serialize().to_pybytes()).hexdigest()
    key_base = sha256_json([SHARD_FORMAT, cache.folder.name, spec.name, schema_hash, writer.row_group])
    first, count = files.spans(spec.name)
    split_by_time = np.array(sorted(files.plan.row_splits) if spec.name == time_table else [], np.int64)

    def shard_key(chosen: np.ndarray) -> str:
        """A hash of the shard's files' lineage digests, row counts, and rows' splits where a
        file's rows are split by time."""
        digest = hashlib.sha256(key_base.encode())
        digest.update(files.digest[chosen].tobytes())
        digest.update(count[chosen].tobytes())
        low, high = np.searchsorted(split_by_time, [chosen[0], chosen[-1] + 1])
        for index in split_by_time[low:high].tolist():
            digest.update(f"{index - chosen[0]}:{files.plan.row_splits[index].tolist()}".encode())
        return digest.hexdigest()

    def write_rows(chosen: np.ndarray) -> None:
        """Append the rows of `chosen` files: one slice per run of rows contiguous in one batch."""
        batch, start, rows = files.placement.batch[chosen], first[chosen], count[chosen]
        runs = np.flatnonzero(np.r_[True, (batch[1:] != batch[:-1]) | (start[1:] != start[:-1] + rows[:-1])])
        slices = [cache.table_rows(files.placement.batches[b], spec.name, s, n) for b, s, n
                  in zip(batch[runs].tolist(), start[runs].tolist(), np.add.reduceat(rows, runs).tolist())]
        table = pa.concat_tables(slices)
        lineage = {name: ([values[i] for i in chosen.tolist()], rows) for name, values in files.lineage.items()}
        lineage["split"] = files.splits(chosen, rows, spec.name, time_table)  # a file split by time has several runs
        columns = [repeated_array(*lineage[name], kind) for name, kind in LINEAGE_COLUMNS.items()]
        writer.append(pa.Table.from_arrays([*table.columns, *columns], schema=schema))

    for start, stop in _shard_bounds(count, files.draw, writer.rows_per_shard):
        chosen = start + np.flatnonzero(count[start:stop])
        rows = int(count[chosen].sum())
        key = shard_key(chosen) if rows <= writer.rows_per_shard else ""  # a longer file spans shards, not taken over
        shard = known_shards.get(key)
        if shard is not None and shard["rows"] == rows and writer.adopt(out_dir / shard["path"], shard):
            continue
        # a row group's worth of rows at a time: a slice holds its batch's table in memory
        group_of = np.cumsum(count[chosen]) // writer.row_group
        for group in np.split(chosen, np.flatnonzero(np.diff(group_of)) + 1):
            write_rows(group)
        writer.cut(key)
    shards = writer.close()
    tensor = spec.tensor
    return {
        "tensor": {"column": tensor.name, "shape": list(tensor.shape), "dtype": tensor.dtype} if tensor else None,
        "columns": schema.names,
        "rows": int(count.sum()),
        "shards": [shard.to_json() for shard in shards],
    }


def _write_plain(rows: list[dict], schema: pa.Schema, path: Path, out_dir: Path) -> dict:
    return _write_columns(arrow_records(rows, schema), path, out_dir)


def _write_columns(table: pa.Table, path: Path, out_dir: Path) -> dict:
    write_parquet(table, path)
    return {"path": str(path.relative_to(out_dir)), "rows": len(table), "bytes": path.stat().st_size}


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
    return [Rejection(**row) for row in read_parquet(path).to_pylist()]
