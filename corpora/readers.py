"""The training side's view of a corpus: a table's rows split into train and held-out.

Families read their shards through here, inside `run_training`, so the registered models
(which ship models/ and common/ only) never need corpora/.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpora.grouping import HELDOUT, TRAIN
from corpora.ingest import shard_paths
from corpora.streaming import SPLIT_COLUMN, ShardRows, column_values
from models.batches import Convert, InMemoryRows, LoaderConfig, Rows

SPLITS = (TRAIN, HELDOUT)


def read_split(manifest_path: str | Path, table: str, columns: Sequence[str],
               max_rows: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{"train": {column: values}, "heldout": {...}} of one table of a shard manifest. A tensor
    column comes back as (N, *shape), any other as a numpy array (strings as objects). Rows in
    neither split (the gap of a split by time) are left out.

    With `max_rows`, each split keeps its first `max_rows` rows in shard order, and reading stops
    once both have them: what a metric reads stays bounded however big the corpus grows."""
    parts: dict[str, list[pa.Table]] = {name: [] for name in SPLITS}
    held = dict.fromkeys(SPLITS, 0)
    for path in shard_paths(Path(manifest_path), table):
        file = pq.ParquetFile(path)
        for index in range(file.num_row_groups):
            if max_rows is not None and min(held.values()) >= max_rows:
                break
            group = file.read_row_group(index, columns=[*columns, SPLIT_COLUMN])
            for name in SPLITS:
                room = None if max_rows is None else max_rows - held[name]
                if room == 0:
                    continue  # not even an empty slice: it would keep the filtered buffer alive
                rows = group.filter(pc.equal(group.column(SPLIT_COLUMN), name))
                rows = rows if room is None else rows.slice(0, room)
                parts[name].append(rows)
                held[name] += len(rows)
    schema = pq.read_schema(shard_paths(Path(manifest_path), table)[0])
    out = {}
    for name in SPLITS:
        rows = pa.concat_tables(parts[name]) if parts[name] else schema.empty_table().select([*columns, SPLIT_COLUMN])
        out[name] = {column: column_values(rows, column) for column in columns}
    return out


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
