"""Decoded rows kept per source file, so a new corpus version decodes only what changed.

One cache folder holds the results of one (modality code version, corpus config): files are
known there by their content hash, so an unchanged, renamed or moved file is never decoded
twice. Results are written in batches as they arrive; a batch becomes visible by one atomic
rename of its index file, so a killed ingest keeps every batch it finished and loses at most
the one it was filling. Transient failures (a worker crash, a timeout) are not kept: the next
run tries those files again.

Beside the batches lies the memo of near-identical pairs the held-out grouping found, so a
changed corpus compares only its new files (corpora.grouping.NearPairMemo).

A batch `b-<id>` is an index (`b-<id>.index.arrow`, an Arrow IPC file with one row per file: its
verdict, content hash, notices and split signatures) and one Parquet file per output table
holding the rows of its accepted files, each file's rows contiguous.
"""
from __future__ import annotations

import functools
import json
import shutil
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.atomic import atomic_write, atomic_write_json
from common.hashing import sha256_json
from corpora.grouping import NearPairMemo
from corpora.shards import TableSpec, arrow_array, arrow_records, arrow_rows, integer_values, read_parquet, tensor_table

CACHE_DIR = "cache"
INDEX_SUFFIX = ".index.arrow"
# Not a verdict on the file's content: never cached, so the next run tries the file again.
TRANSIENT_ERRORS = frozenset({"WorkerCrashed", "Timeout", "FileChanged", "FileNotFoundError", "PermissionError"})
HASHES_FILE = "hashes.parquet"
NEAR_PAIRS_FILE = "near-pairs.parquet"
SPLIT_BASIS_FILE = "split-basis.json"  # which corpus version's groups the next split may keep, and under which rule
# RowCache.compact: a batch under this share of a full one is small; up to MIN_SMALL_BATCHES
# of them, and no more than the full ones, are left alone
FULL_FRACTION = 0.75
MIN_SMALL_BATCHES = 4
NEAR_PAIRS_SCHEMA = pa.schema([("table", pa.string()), ("a", pa.string()), ("b", pa.string())])  # b "": a was compared
# Part of the cache key: a cache written in another layout is decoded again, never misread.
# 2: row spans as numbers (they were JSON, whose parse was most of reading the index).
# 3: batch indexes as Arrow IPC files, not Parquet (see write_index).
CACHE_FORMAT = 3
# Beside a batch index, the near pairs its files formed with the files decoded before them in the
# same run (`run`): a killed ingest's comparisons survive it (corpora.ingest.RunNearSearch).
NEAR_SUFFIX = ".near.parquet"
BATCH_NEAR_SCHEMA = pa.schema([("run", pa.string()), *NEAR_PAIRS_SCHEMA])
# In a batch index's schema metadata: b"1" when the writer closed the batch because it was full
# (by files or by bytes, as it counts them), b"0" when it wrote what was left at a run's end.
CLOSED_FULL_KEY = b"atelier.closed_full"
INDEX_SCHEMA = pa.schema([
    ("sha256", pa.string()),
    ("accepted", pa.bool_()),
    ("stage", pa.string()),
    ("error_type", pa.string()),
    ("message", pa.string()),
    ("content_hash", pa.string()),
    ("notices", pa.string()),  # JSON [[stage, kind, message], ...]
    # [first row in the batch's table, rows] for each table of the cache, in name order; [0, 0]: none
    ("row_spans", pa.list_(pa.int64())),
    ("arrays", pa.binary()),  # split signatures, work keys and time spans, packed (see _pack)
    # JSON [[name, dtype, shape], ...], in packing order; most files of a batch share a few
    ("arrays_layout", pa.dictionary(pa.int32(), pa.string())),
])


class BatchLayout:
    """Where each file of a batch has its rows in the batch's tables, and how its packed arrays
    are laid out: one array for the batch, not a dictionary per file (the index holds an entry
    for every file of the corpus)."""

    __slots__ = ("names", "spans", "layouts", "layout_of")

    def __init__(self, names: tuple[str, ...], spans: np.ndarray, layouts: pa.ChunkedArray | Sequence[str]):
        """`names`: the cache's tables, in name order; `spans`: (files, tables, 2) of each file's
        [first row, rows] there, in batch order; `layouts`: each file's `arrays_layout` (most
        files of a batch share a few), as the index's dictionary column or a list."""
        self.names = names
        self.spans = spans
        if isinstance(layouts, pa.ChunkedArray) and layouts.num_chunks == 1:
            encoded = layouts.chunk(0)  # the index's dictionary column: the distinct layouts, a number per file
        else:
            values = layouts.to_pylist() if isinstance(layouts, pa.ChunkedArray) else list(layouts)
            encoded = arrow_array(values, pa.dictionary(pa.int32(), pa.string()))
        self.layouts = tuple(encoded.dictionary.to_pylist())
        self.layout_of = integer_values(encoded.indices).copy()  # not a view that keeps the index's buffers


class CachedFile(NamedTuple):
    """What the cache knows of one file, without its rows or signatures (those stay on disk). A
    tuple: the index builds one per file of the corpus, in C (see `RowCache.load_index`)."""

    batch: str
    position: int  # its row in the batch index
    accepted: bool
    stage: str
    error_type: str
    message: str
    content_hash: str
    notices: list  # [[stage, kind, message], ...]
    batch_layout: BatchLayout

    def span(self, table: str) -> tuple[int, int]:
        """(first row in the batch's `table`, rows): (0, 0) when the file has none there."""
        names = self.batch_layout.names
        if table not in names:
            return 0, 0
        first, count = self.batch_layout.spans[self.position, names.index(table)].tolist()
        return first, count

    @property
    def row_spans(self) -> dict[str, tuple[int, int]]:
        """Every table the file has rows in: table -> (first, count)."""
        return {name: span for name in self.batch_layout.names if (span := self.span(name))[1]}


class Placement:
    """Where a list of cached files lies in the cache, in columns: each file's batch (a number
    into `batches`) and position there, and the files of each batch. Built once per ingest for
    the split's signatures and the shards."""

    def __init__(self, files: Sequence[CachedFile]):
        layout_of: dict[str, BatchLayout] = {}  # the batches, in order of first use
        for cached in files:
            layout_of.setdefault(cached.batch, cached.batch_layout)
        self.batches, self.batch_layouts = list(layout_of), list(layout_of.values())
        number = {batch: index for index, batch in enumerate(self.batches)}
        self.batch = np.fromiter((number[cached.batch] for cached in files), np.int64, len(files))
        self.position = np.fromiter((cached.position for cached in files), np.int64, len(files))
        order = np.argsort(self.batch, kind="stable")
        bounds = np.searchsorted(self.batch[order], np.arange(len(self.batches) + 1))
        self.files_of_batch = [order[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]

    def __len__(self) -> int:
        return len(self.position)


def hashes_file_of(out_dir: Path) -> Path:
    """The last scan's content hashes (corpora.scanning) of the corpus written to `out_dir`,
    shared by every cache key."""
    return Path(out_dir) / CACHE_DIR / HASHES_FILE


def cache_key(code_version: str, config: dict) -> str:
    return sha256_json({"cache_format": CACHE_FORMAT, "code_version": code_version, "config": config})[:16]


def _pack(arrays: dict[str, np.ndarray]) -> tuple[bytes, str]:
    """Small arrays as one byte string plus a JSON layout: compact, and no pickle to load."""
    layout, parts = [], []
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        layout.append([name, array.dtype.str, list(array.shape)])
        parts.append(array.tobytes())
    return b"".join(parts), json.dumps(layout)


def _texts(column: pa.ChunkedArray) -> list[str]:
    """A string column's values, "" for a null (`fill_null` would import pandas, half a second)."""
    values = column.to_pylist()
    return [value or "" for value in values] if column.null_count else values


@functools.lru_cache(maxsize=256)
def _notices(notices_json: str) -> list:
    """Parsed once per distinct text: most files have none, and share one empty list (read only)."""
    return json.loads(notices_json)


@functools.lru_cache(maxsize=256)
def _layout(layout_json: str) -> tuple:
    """(name, dtype, shape, offset, count) per array; most files of a corpus share one layout."""
    parts, offset = [], 0
    for name, dtype, shape in json.loads(layout_json):
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        parts.append((name, dtype, tuple(shape), offset, count))
        offset += count * dtype.itemsize
    return tuple(parts)


def _array_places(batch_layout: BatchLayout, positions: np.ndarray, row_type: dict) -> dict[str, tuple]:
    """Per array name, where the batch's files at `positions` hold it in their packed records:
    (which of them have it, its byte offset in each record, its bytes, its rows), worked out
    once per distinct layout; `row_type` learns each name's dtype and row shape."""
    numbers, which = np.unique(batch_layout.layout_of[positions], return_inverse=True)
    which = which.reshape(-1)
    by_layout: dict[str, np.ndarray] = {}  # name -> (has it, offset, bytes, rows) per distinct layout
    for number, layout_number in enumerate(numbers.tolist()):
        for name, dtype, shape, offset, count in _layout(batch_layout.layouts[layout_number]):
            if name == "time_spans" or (shape and shape[0]):
                place = by_layout.setdefault(name, np.zeros((4, len(numbers)), np.int64))
                place[:, number] = 1, offset, count * dtype.itemsize, shape[0] if shape else 1
                row_type[name] = (dtype, shape[1:])
    places = {}
    for name, (has, offset, nbytes, rows) in by_layout.items():
        present = has[which].astype(bool)
        chosen = which[present]
        places[name] = (present, offset[chosen], nbytes[chosen], rows[chosen])
    return places


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices start, start + 1, ... of each range, one range after another."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(int(ends[-1]) if len(ends) else 0)


def _gather(data: np.ndarray, starts: np.ndarray, nbytes: np.ndarray, itemsize: int) -> np.ndarray:
    """The bytes of each range [start, start + nbytes) of `data`, one after another, copied in
    the widest unit that every range's start and length allow (a word, not a byte, at a time
    where the records keep their arrays aligned)."""
    unit = int(np.gcd.reduce(np.r_[starts, nbytes, itemsize, 8]))
    words = data[: len(data) // unit * unit].view(f"u{unit}")
    return words[_ranges(starts // unit, nbytes // unit)].view(np.uint8)


class RowCache:
    """The decoded rows of one (code version, config), under `<corpus out dir>/cache/<key>/`."""

    def __init__(self, out_dir: Path, key: str, specs: Sequence[TableSpec], open_batches: int = 8):
        self.root = Path(out_dir) / CACHE_DIR
        self.folder = self.root / key
        self.specs = {spec.name: spec for spec in specs}
        self.table_names = tuple(sorted(self.specs))  # the order of each index row's spans
        self._open: OrderedDict[tuple[str, str], Any] = OrderedDict()  # LRU of batch tables (and lists) read
        self._open_limit = open_batches
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def hashes_file(self) -> Path:
        return hashes_file_of(self.root.parent)

    def span_row(self, spans: dict[str, list[int]]) -> list[int]:
        """A file's {table: [first row, rows]} as its index row's `row_spans`."""
        return [number for name in self.table_names for number in spans.get(name, (0, 0))]

    def batch_layout(self, index_rows: list[dict]) -> BatchLayout:
        """The layout of a batch about to be committed, from its index rows."""
        spans = np.array([row["row_spans"] for row in index_rows], np.int64).reshape(
            len(index_rows), len(self.table_names), 2)
        return BatchLayout(self.table_names, spans, [row["arrays_layout"] for row in index_rows])

    # ---- reading ---------------------------------------------------------------------------
    def load_index(self) -> dict[str, CachedFile]:
        """Every file this cache holds a verdict for, by content hash (the newest batch wins)."""
        known: dict[str, CachedFile] = {}
        columns = [name for name in INDEX_SCHEMA.names if name != "arrays"]
        for path in sorted(self.folder.glob(f"b-*{INDEX_SUFFIX}"), key=lambda p: p.stat().st_mtime_ns):
            batch = path.name[: -len(INDEX_SUFFIX)]
            try:
                table = read_index(path, columns)
            except (OSError, pa.ArrowInvalid):
                continue  # unreadable: its files are decoded again
            try:
                spans = integer_values(table.column("row_spans").combine_chunks().flatten())
                spans = spans.reshape(table.num_rows, len(self.table_names), 2).copy()  # as layout_of
            except (ValueError, pa.ArrowInvalid):
                continue  # not this cache's tables: its files are decoded again
            column = {name: _texts(table.column(name)) for name in columns
                      if name not in ("accepted", "row_spans", "arrays_layout")}
            batch_layout = BatchLayout(self.table_names, spans, table.column("arrays_layout"))
            # a tuple per file made without a Python call per file (the index is about a tenth of a one-file change)
            known.update(zip(column["sha256"], map(tuple.__new__, repeat(CachedFile), zip(
                repeat(batch), range(table.num_rows), table.column("accepted").to_pylist(), column["stage"],
                column["error_type"], column["message"], column["content_hash"], map(_notices, column["notices"]),
                repeat(batch_layout)))))
        return known

    def _opened(self, key: tuple[str, str], read: Callable[[], Any]) -> Any:
        """`read()`, kept among the last `open_batches` things read."""
        if key in self._open:
            self._open.move_to_end(key)
        else:
            self._open[key] = read()
            if len(self._open) > self._open_limit:
                self._open.popitem(last=False)
        return self._open[key]

    def _table(self, batch: str, name: str) -> pa.Table:
        return self._opened((batch, name), lambda: read_parquet(self.folder / f"{batch}.{name}.parquet"))

    def stacked_arrays(self, files: Placement) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                                       dict[int, np.ndarray]]:
        """The packed arrays of `files` (accepted ones): per name, every file's rows stacked in
        file order with the index in `files` each row came from, and time spans per file index.

        The layouts (known from the index already) size each stacked array first; then each
        batch's rows are written straight to their places, one gather per batch and array name.
        So the peak is the result plus one batch, not the result three times over (pieces, their
        concatenation, and that reordered)."""
        places_of = {}
        rows_per_file: dict[str, np.ndarray] = {}
        row_type: dict[str, tuple[np.dtype, tuple]] = {}  # name -> dtype and shape of one row
        for batch, batch_layout, owners in zip(files.batches, files.batch_layouts, files.files_of_batch):
            positions = files.position[owners]
            places = _array_places(batch_layout, positions, row_type)
            places_of[batch] = (owners, positions, places)
            for name, (present, _, _, rows) in places.items():
                if name != "time_spans":
                    rows_per_file.setdefault(name, np.zeros(len(files), np.int64))[owners[present]] = rows
        stacked, first_row = {}, {}
        for name, counts in rows_per_file.items():
            first_row[name] = np.cumsum(counts) - counts
            dtype, row_shape = row_type[name]
            stacked[name] = (np.empty((int(counts.sum()), *row_shape), dtype),
                             np.repeat(np.arange(len(files), dtype=np.int32), counts))
        time_spans: dict[int, np.ndarray] = {}
        for batch in files.batches:
            owners, positions, places = places_of.pop(batch)
            packed = read_index(self.folder / f"{batch}{INDEX_SUFFIX}", ["arrays"]).column("arrays").combine_chunks()
            record_starts = np.frombuffer(packed.buffers()[1], np.int32)
            record_starts = record_starts[packed.offset : packed.offset + len(packed) + 1]
            data = packed.buffers()[2]
            data = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
            for name, (present, offset, nbytes, rows) in places.items():
                dtype, row_shape = row_type[name]
                values = _gather(data, record_starts[positions[present]] + offset, nbytes, dtype.itemsize)
                values = values.view(dtype).reshape(-1, *row_shape)
                if name == "time_spans":
                    time_spans.update(zip(owners[present].tolist(), np.split(values, np.cumsum(rows)[:-1])))
                else:
                    stacked[name][0][_ranges(first_row[name][owners[present]], rows)] = values
        return stacked, time_spans

    def table_rows(self, batch: str, table: str, first: int, count: int) -> pa.Table:
        return self._table(batch, table).slice(first, count)

    def load_near_memo(self) -> NearPairMemo:
        """The last split's near pairs and those of the batches decoded since; the set of files
        compared is the largest of the last split's and each later run's, and the next largest
        is kept beside it."""
        memo = NearPairMemo()
        compared: dict[str, dict[str, set[str]]] = {}  # run ("" for the last split) -> table -> files
        paths = [self.folder / NEAR_PAIRS_FILE, *self.folder.glob(f"b-*{NEAR_SUFFIX}")]
        for path in paths:
            try:
                columns = read_parquet(path).to_pydict()
            except (OSError, pa.ArrowInvalid):
                continue  # absent or unreadable: its files are compared again
            runs = columns.get("run", [""] * len(columns["table"]))
            for run, table, a, b in zip(runs, columns["table"], columns["a"], columns["b"]):
                if b:
                    memo.pairs.setdefault(table, set()).add((a, b))
                else:
                    compared.setdefault(run, {}).setdefault(table, set()).add(a)
        for table in {table for tables in compared.values() for table in tables}:
            largest = sorted((tables[table] for tables in compared.values() if table in tables), key=len, reverse=True)
            memo.checked[table] = largest[0]
            if len(largest) > 1:
                memo.also_checked[table] = largest[1]
        return memo

    def save_near_memo(self, memo: NearPairMemo) -> None:
        """Write the split's memo; the batches' near files are in it now."""
        rows = [(table, sha, "") for table, shas in memo.checked.items() for sha in sorted(shas)]
        rows += [(table, a, b) for table, pairs in memo.pairs.items() for a, b in sorted(pairs)]
        _write(arrow_rows(rows, NEAR_PAIRS_SCHEMA), self.folder / NEAR_PAIRS_FILE)
        for path in self.folder.glob(f"b-*{NEAR_SUFFIX}"):
            path.unlink(missing_ok=True)

    def load_split_basis(self) -> dict | None:
        try:
            return json.loads((self.folder / SPLIT_BASIS_FILE).read_text())
        except (OSError, ValueError):
            return None

    def save_split_basis(self, basis: dict) -> None:
        atomic_write_json(self.folder / SPLIT_BASIS_FILE, basis)

    def save_batch_near(self, batch: str, rows: list[tuple[str, str, str, str]]) -> None:
        """(run, table, a, b) rows of a committed batch (see NEAR_SUFFIX)."""
        _write(arrow_rows(rows, BATCH_NEAR_SCHEMA), self.folder / f"{batch}{NEAR_SUFFIX}")

    # ---- writing ---------------------------------------------------------------------------
    def writer(self, batch_files: int, batch_megabytes: float, on_commit=None) -> BatchWriter:
        return BatchWriter(self, batch_files, int(batch_megabytes * (1 << 20)), on_commit)

    # ---- housekeeping ----------------------------------------------------------------------
    def compact(self, live: set[str], known: dict[str, CachedFile], batch_files: int,
                batch_megabytes: float) -> set[str]:
        """Merge the live files of batches under FULL_FRACTION of a batch into full batches once
        they outnumber the full ones (and MIN_SMALL_BATCHES): each change that decodes adds a
        batch, so a corpus edited a file at a time would otherwise gather one more index and
        table file per edit for every later version to open. `known` points at the new batches
        afterwards, so the next `collect_garbage` removes the old ones; a kill in between
        leaves both, and the newer wins. Returns the batches that hold live files afterwards."""
        live_files = _live_files_per_batch(live, known)
        if len(live_files) <= MIN_SMALL_BATCHES:
            return set(live_files)
        small = sorted(batch for batch, count in live_files.items() if self._is_small(batch, count, batch_files))
        if len(small) <= max(len(live_files) - len(small), MIN_SMALL_BATCHES):
            return set(live_files)
        members = _live_members(live, known)
        merged = _MergedBatch(self, batch_files, int(batch_megabytes * (1 << 20)), known)
        for batch in small:
            index = read_index(self.folder / f"{batch}{INDEX_SUFFIX}").to_pylist()
            for cached in sorted(members[batch], key=attrgetter("position")):
                tables = {name: self.table_rows(batch, name, first, count)
                          for name, (first, count) in cached.row_spans.items()}
                merged.add(index[cached.position], tables)
        merged.flush()
        return set(_live_files_per_batch(live, known))

    def _is_small(self, batch: str, live_files: int, batch_files: int) -> bool:
        """Whether a batch with `live_files` left is under FULL_FRACTION of a full one: by files, or,
        for a batch the writer closed when its rows reached its bytes, by the share of its files
        still live (the writer's count of bytes is not the Parquet files', so comparing those
        would call every batch closed by bytes small)."""
        if live_files >= FULL_FRACTION * batch_files:
            return False
        index = read_index(self.folder / f"{batch}{INDEX_SUFFIX}", ["sha256"])
        closed_full = (index.schema.metadata or {}).get(CLOSED_FULL_KEY)
        return closed_full != b"1" or live_files < FULL_FRACTION * index.num_rows

    def collect_garbage(self, live_batches: set[str]) -> None:
        """Remove other keys' folders, batches other than `live_batches` (`compact`'s answer),
        and parts of batches whose index was never committed."""
        for folder in self.root.iterdir():
            if folder.is_dir() and folder != self.folder:  # another code version or config
                shutil.rmtree(folder, ignore_errors=True)
        live_batches = live_batches | {name.split(".", 1)[0] for name in (NEAR_PAIRS_FILE, SPLIT_BASIS_FILE)}
        for path in self.folder.iterdir():
            if path.name.split(".", 1)[0] not in live_batches:  # a temporary starts with "." and never is
                path.unlink(missing_ok=True)


def _live_files_per_batch(live: set[str], known: dict[str, CachedFile]) -> Counter:
    """How many of the live files each batch holds, counted without a Python step per file (a
    loop over the files was a twentieth of a one-file change at 176,000 files)."""
    return Counter(map(itemgetter(0), filter(None, map(known.get, live))))  # item 0: CachedFile.batch


def _live_members(live: set[str], known: dict[str, CachedFile]) -> dict[str, list[CachedFile]]:
    """The cache entries of each batch's live files."""
    members: dict[str, list[CachedFile]] = {}
    for cached in filter(None, map(known.get, live)):
        members.setdefault(cached.batch, []).append(cached)
    return members


class BatchWriter:
    """Collects decoded files and commits them as batches of bounded size; `on_commit(batch,
    [(sha256, DecodedFile)])` hears of each batch's accepted files once its index is written."""

    def __init__(self, cache: RowCache, batch_files: int, batch_bytes: int,
                 on_commit: Callable[[str, list], None] | None = None):
        self.cache = cache
        self.on_commit = on_commit
        self.batch_files, self.batch_bytes = max(1, batch_files), max(1, batch_bytes)
        self.pending: list[tuple[str, object]] = []  # (sha256, DecodedFile or ItemFailure-like)
        self.pending_bytes = 0
        self.committed: dict[str, CachedFile] = {}

    def add_decoded(self, sha256: str, decoded) -> None:
        self.pending.append((sha256, decoded))
        self.pending_bytes += sum(rows.tensors.nbytes if rows.tensors is not None else 64 * len(rows)
                                  for rows in decoded.tables.values())
        self._flush_if_full()

    def add_rejected(self, sha256: str, stage: str, error_type: str, message: str) -> bool:
        """Keep a rejection; False (and nothing kept) for a failure the next run should retry."""
        if error_type in TRANSIENT_ERRORS:
            return False
        self.pending.append((sha256, (stage, error_type, message)))
        self._flush_if_full()
        return True

    def _flush_if_full(self) -> None:
        if len(self.pending) >= self.batch_files or self.pending_bytes >= self.batch_bytes:
            self.flush(full=True)

    def flush(self, full: bool = False) -> None:
        if not self.pending:
            return
        batch = _new_batch_name()
        folder = self.cache.folder
        index_rows = []
        row_parts: dict[str, list] = {name: [] for name in self.cache.specs}
        next_row = {name: 0 for name in self.cache.specs}
        for sha256, result in self.pending:
            if isinstance(result, tuple):
                stage, error_type, message = result
                index_rows.append({"sha256": sha256, "accepted": False, "stage": stage, "error_type": error_type,
                                   "message": message, "content_hash": "", "notices": "[]",
                                   "row_spans": self.cache.span_row({}), "arrays": b"", "arrays_layout": "[]"})
                continue
            spans = {}
            for name, rows in result.tables.items():
                if name in self.cache.specs and len(rows):
                    spans[name] = [next_row[name], len(rows)]
                    next_row[name] += len(rows)
                    row_parts[name].append(rows)
            arrays = {f"signature:{table}": value for table, value in result.signatures.items()}
            if result.work_keys is not None:
                arrays["work_keys"] = result.work_keys
            if result.time_spans is not None:
                arrays["time_spans"] = result.time_spans
            packed, layout = _pack(arrays)
            index_rows.append({"sha256": sha256, "accepted": True, "stage": "", "error_type": "", "message": "",
                               "content_hash": result.content_hash,
                               "notices": json.dumps([[n.stage, n.kind, n.message] for n in result.notices]),
                               "row_spans": self.cache.span_row(spans), "arrays": packed, "arrays_layout": layout})
        for name, parts in row_parts.items():
            if parts:
                _write(_stack(self.cache.specs[name], parts), folder / f"{batch}.{name}.parquet")
        write_index(_index_table(index_rows, full), folder / f"{batch}{INDEX_SUFFIX}")  # commit
        batch_layout = self.cache.batch_layout(index_rows)
        for position, row in enumerate(index_rows):
            self.committed[row["sha256"]] = CachedFile(
                batch, position, row["accepted"], row["stage"], row["error_type"], row["message"],
                row["content_hash"], _notices(row["notices"]), batch_layout)
        decoded = [(sha, result) for sha, result in self.pending if not isinstance(result, tuple)]
        self.pending, self.pending_bytes = [], 0  # committed: an on_commit that raises must not commit them twice
        if self.on_commit is not None:
            self.on_commit(batch, decoded)


class _MergedBatch:
    """The batches `RowCache.compact` writes: index rows and table slices copied as they are,
    committed (index last) every `batch_files` files or `batch_bytes` of rows."""

    def __init__(self, cache: RowCache, batch_files: int, batch_bytes: int, known: dict[str, CachedFile]):
        self.cache, self.known = cache, known
        self.batch_files, self.batch_bytes = max(1, batch_files), max(1, batch_bytes)
        self._reset()

    def _reset(self) -> None:
        self.index: list[dict] = []
        self.parts: dict[str, list[pa.Table]] = {}
        self.rows: dict[str, int] = {}
        self.nbytes = 0

    def add(self, index_row: dict, tables: dict[str, pa.Table]) -> None:
        spans = {}
        for name, rows in tables.items():
            spans[name] = [self.rows.get(name, 0), rows.num_rows]
            self.rows[name] = self.rows.get(name, 0) + rows.num_rows
            self.parts.setdefault(name, []).append(rows)
            self.nbytes += rows.nbytes
        self.index.append({**index_row, "row_spans": self.cache.span_row(spans)})
        if len(self.index) >= self.batch_files or self.nbytes >= self.batch_bytes:
            self.flush(full=True)

    def flush(self, full: bool = False) -> None:
        if not self.index:
            return
        batch = _new_batch_name()
        folder = self.cache.folder
        for name, parts in self.parts.items():
            _write(pa.concat_tables(parts), folder / f"{batch}.{name}.parquet")
        write_index(_index_table(self.index, full), folder / f"{batch}{INDEX_SUFFIX}")  # commit
        batch_layout = self.cache.batch_layout(self.index)
        for position, row in enumerate(self.index):
            old = self.known[row["sha256"]]
            self.known[row["sha256"]] = CachedFile(
                batch, position, old.accepted, old.stage, old.error_type, old.message, old.content_hash, old.notices,
                batch_layout)
        self._reset()


def write_index(table: pa.Table, path: Path) -> None:
    """A batch index as an Arrow IPC file, uncompressed: every later version reads every
    index, and IPC needs no decoding where a Parquet file's footer and pages cost about a
    millisecond a batch (docs/corpora-at-scale.md)."""
    def write(file) -> None:
        with pa.ipc.new_file(file, table.schema) as writer:
            writer.write_table(table)
    atomic_write(path, write)


def read_index(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """A batch index (write_index), or those of its `columns` (the others are not read)."""
    fields = None if columns is None else [INDEX_SCHEMA.get_field_index(name) for name in columns]
    with pa.OSFile(str(path)) as source:
        table = pa.ipc.open_file(source, options=pa.ipc.IpcReadOptions(included_fields=fields)).read_all()
    return table.select(columns) if columns is not None else table


def _index_table(rows: list[dict], closed_full: bool) -> pa.Table:
    return arrow_records(rows, INDEX_SCHEMA).replace_schema_metadata({CLOSED_FULL_KEY: b"1" if closed_full else b"0"})


def _new_batch_name() -> str:
    return f"b-{uuid.uuid4().hex[:16]}"


def _stack(spec: TableSpec, parts: list) -> pa.Table:
    tensors = np.concatenate([rows.tensors for rows in parts]) if spec.tensor is not None else None
    return tensor_table(spec, tensors, {name: _stacked_column([rows.columns[name] for rows in parts])
                                        for name in spec.columns})


def _stacked_column(parts: list) -> Sequence:
    """One column of several files' rows: numbers that came as numpy arrays stay one array (a
    MIDI file's notes are thousands of rows, too many to visit one Python value at a time)."""
    if all(isinstance(part, np.ndarray) and part.dtype != object for part in parts):
        return np.concatenate(parts)
    return [value for part in parts for value in part]


def _write(table: pa.Table, path: Path) -> None:
    # lz4: the cache is read back once per new version, so speed matters more than size here
    atomic_write(path, lambda file: pq.write_table(table, file, compression="lz4", write_statistics=False))
