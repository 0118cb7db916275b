"""The training side's view of a corpus: a table's rows split into train and held-out.

Families read their shards through here, inside `run_training`, so the registered models
(which ship models/ and common/ only) never need corpora/.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corpora.grouping import HELDOUT, TRAIN
from corpora.ingest import shard_paths
from corpora.streaming import SPLIT_COLUMN, ShardRows, column_values, in_split
from models.batches import Convert, InMemoryRows, LoaderConfig, Rows

SPLITS = (TRAIN, HELDOUT)


def read_split(manifest_path: str | Path, table: str, columns: Sequence[str],
               max_rows: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{"train": {column: values}, "heldout": {...}} of one table of a shard manifest. A tensor
    column comes back as (N, *shape), any other as a numpy array (strings as objects). Rows in
    neither split (the gap of a split by time) are left out.

    With `max_rows`, each split keeps at most that many rows, spread evenly over the split in
    shard order (shards follow file paths, so a corpus in class folders keeps every class in
    its share), and only the row groups holding them are read: what a metric reads stays
    bounded however big the corpus grows. The first pass reads the split column alone."""
    groups = [(path, index) for path in shard_paths(Path(manifest_path), table)
              for index in range(pq.ParquetFile(path).num_row_groups)]
    sides = [_split_codes(path, index) for path, index in groups]  # one byte a row
    wanted = _rows_to_read(np.concatenate(sides) if sides else np.empty(0, np.int8), max_rows)
    parts: dict[str, list[pa.Table]] = {name: [] for name in SPLITS}
    start = 0
    for (path, index), codes in zip(groups, sides):
        take = np.flatnonzero(wanted[start:start + len(codes)])
        start += len(codes)
        if not len(take):
            continue
        rows = pq.ParquetFile(path).read_row_group(index, columns=[*columns, SPLIT_COLUMN]).take(take)
        for code, name in enumerate(SPLITS):
            parts[name].append(rows.filter(pa.array(codes[take] == code)))
    schema = pq.read_schema(groups[0][0]) if groups else None
    out = {}
    for name in SPLITS:
        rows = pa.concat_tables(parts[name]) if parts[name] else schema.empty_table().select([*columns, SPLIT_COLUMN])
        out[name] = {column: column_values(rows, column) for column in columns}
    return out


def _split_codes(path: Path, index: int) -> np.ndarray:
    """A row group's split as the index of its name in SPLITS, -1 for neither."""
    names = pq.ParquetFile(path).read_row_group(index, columns=[SPLIT_COLUMN]).column(SPLIT_COLUMN)
    codes = np.full(len(names), -1, dtype=np.int8)
    for code, name in enumerate(SPLITS):
        codes[in_split(names, name)] = code
    return codes


def _rows_to_read(codes: np.ndarray, max_rows: int | None) -> np.ndarray:
    wanted = codes >= 0
    if max_rows is None:
        return wanted
    for code in range(len(SPLITS)):
        rows = np.flatnonzero(codes == code)
        if len(rows) > max_rows:
            wanted[rows] = False
            wanted[rows[np.linspace(0, len(rows) - 1, max_rows).round().astype(np.int64)]] = True
    return wanted


def row_group_bytes(paths: Sequence[Path]) -> list[int]:
    """Each row group's uncompressed size (all its columns), from the shards' footers."""
    sizes = []
    for path in paths:
        metadata = pq.ParquetFile(path).metadata
        sizes += [metadata.row_group(index).total_byte_size for index in range(metadata.num_row_groups)]
    return sizes


def streams(loader: LoaderConfig, sizes: Sequence[int]) -> bool:
    """Whether a table is read as a stream: forced by `loader.stream`, or ("auto") when its row
    groups hold more than `loader.stream_above_megabytes` uncompressed (what memory would hold)."""
    if loader.stream not in ("auto", "on", "off"):
        raise ValueError(f"loader stream must be 'auto', 'on' or 'off', not {loader.stream!r}")
    if loader.stream != "auto":
        return loader.stream == "on"
    return sum(sizes) > loader.stream_above_megabytes * 2**20


def training_rows(manifest_path: str | Path, table: str, columns: Sequence[str], loader: LoaderConfig,
                  convert: Mapping[str, Convert] | None = None) -> Rows:
    """The training split of a table as a family's rows: streamed from the shards when
    `streams` says so, else read into memory once (the demo corpora: fastest, and on a GPU the
    image family keeps them there). `convert` maps a column's values as they are read."""
    paths = shard_paths(Path(manifest_path), table)
    sizes = row_group_bytes(paths)
    if streams(loader, sizes):
        window = max(1, int(loader.shuffle_window_megabytes * 2**20 // max(sizes)))
        return ShardRows(paths, columns, TRAIN, window, loader.prefetch_windows, convert)
    values = read_split(manifest_path, table, columns)[TRAIN]
    convert = convert or {}
    return InMemoryRows({name: convert[name](array) if name in convert else array for name, array in values.items()})
