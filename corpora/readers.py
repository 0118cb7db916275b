"""The training side's view of a corpus: a table's rows split into train and held-out.

Families read their shards through here, inside `run_training`, so the registered models
(which ship models/ and common/ only) never need corpora/.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from corpora.grouping import HELDOUT, TRAIN
from corpora.ingest import shard_paths
from corpora.shards import read_shards, tensor_column_of, tensors_from_table

SPLITS = (TRAIN, HELDOUT)


def read_split(manifest_path: str | Path, table: str, columns: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """{"train": {column: values}, "heldout": {...}} of one table of a shard manifest. A tensor
    column comes back as (N, *shape), any other as a numpy array (strings as objects). Rows in
    neither split (the gap of a split by time) are left out."""
    shards = read_shards(shard_paths(Path(manifest_path), table), columns=[*columns, "split"])
    split = np.asarray(shards.column("split").to_pylist(), dtype=object)
    values = {}
    for column in columns:
        try:
            tensor_column_of(shards.schema, column)
            values[column] = tensors_from_table(shards, column)
        except KeyError:  # a plain column
            values[column] = np.asarray(shards.column(column).to_pylist(), dtype=object)
    return {name: {column: array[split == name] for column, array in values.items()} for name in SPLITS}
