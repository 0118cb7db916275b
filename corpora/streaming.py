"""A split of a shard table streamed a window of row groups at a time (block shuffle).

Each epoch shuffles the order of the split's Parquet row groups (over all shards); a window of
row groups is read with only the wanted columns, its rows of the split are shuffled together,
and batches are cut from it in order. A background thread reads and shuffles the next windows
(at most `prefetch_windows` ahead), so a step rarely waits on the disk, and memory is bounded by the window
and the read-ahead, never by the corpus. Tensor columns come out of the Parquet buffers without
a per-row decode (corpora.shards.tensors_from_table) and into torch without another copy.

Under a world size > 1, rank r reads only every world_size-th row group of the epoch's order,
starting at r: the ranks read disjoint shares whose union is the split, and each yields its own
batch_size / world_size rows per step. The state (seed, epoch, position) is per rank; the
trainer keeps every rank's in the checkpoint. docs/streaming.md has the design and numbers.
"""
from __future__ import annotations

import functools
import queue
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from corpora.shards import tensor_column_of, tensors_from_table
from models.batches import Batch, Convert
from models.distributed import Distributed

SPLIT_COLUMN = "split"


@dataclass(frozen=True)
class RowGroup:
    path: Path
    index: int
    rows: int  # rows of the wanted split in it
    wanted: bytes = field(default=b"", compare=False, repr=False)  # np.packbits of which rows those are; b"": all


FOOTERS_KEPT = 64  # shards whose parsed Parquet footers a ShardRows keeps (a few KB each)


@dataclass
class Window:
    """Shuffled rows of one window, tagged with where they lie in their epoch."""

    columns: dict[str, np.ndarray]
    epoch: int
    start: int  # rows of this rank's epoch before this window
    row_groups: int
    last: bool  # the epoch's last window

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))


def in_split(names: pa.ChunkedArray, split: str) -> np.ndarray:
    """Which rows of a split column belong to `split` (a row in no split, null, does not)."""
    return pc.fill_null(pc.equal(names, split), False).to_numpy(zero_copy_only=False)


def column_values(table: pa.Table, column: str) -> np.ndarray:
    """A tensor column as (N, *shape) straight from its buffer; any other column as numpy."""
    try:
        tensor_column_of(table.schema, column)
    except KeyError:
        return table.column(column).to_numpy(zero_copy_only=False)
    return tensors_from_table(table, column)


class ShardRows:
    """The rows of one split (`split`: "train" or "heldout") of a table's shards, streamed.

    Opening reads only the split column, once, to know which rows of each row group are of the
    split (rows of neither split, a split by time's gap, are never yielded); reading rows later
    reads only the wanted columns, through the shard's footer parsed once."""

    def __init__(self, paths: Sequence[str | Path], columns: Sequence[str], split: str, window_row_groups: int = 1,
                 prefetch_windows: int = 1, convert: Mapping[str, Convert] | None = None):
        self.columns, self.split, self.convert = list(columns), split, dict(convert or {})
        self.window_row_groups, self.prefetch_windows = max(1, window_row_groups), max(1, prefetch_windows)
        self._footer = functools.lru_cache(maxsize=FOOTERS_KEPT)(pq.read_metadata)  # thread-safe
        self.row_groups: list[RowGroup] = []
        for path in map(Path, paths):
            with self._open(path) as file:
                for index in range(file.num_row_groups):
                    mask = in_split(file.read_row_group(index, columns=[SPLIT_COLUMN]).column(SPLIT_COLUMN), split)
                    wanted = int(mask.sum())
                    if wanted:
                        packed = b"" if wanted == len(mask) else np.packbits(mask).tobytes()
                        self.row_groups.append(RowGroup(path, index, wanted, packed))
        self.num_rows = sum(group.rows for group in self.row_groups)
        if not self.num_rows:
            raise ValueError(f"no {split!r} rows in {len(paths)} shard(s)")
        self.schema = pq.read_schema(paths[0])
        self.row_groups_read = 0  # by every source of these rows: the tests bound the read-ahead with it

    def _open(self, path: Path) -> pq.ParquetFile:
        return pq.ParquetFile(path, metadata=self._footer(path))

    def row_shape(self, column: str) -> tuple[int, ...]:
        """A row's shape as batches hold it: what `convert` makes of an empty column of the stored shape."""
        try:
            spec = tensor_column_of(self.schema, column)
        except KeyError:
            return ()
        if column not in self.convert:
            return spec.shape
        return tuple(self.convert[column](np.empty((0, *spec.shape), spec.dtype)).shape[1:])

    def batches(self, batch_size: int, seed: int, distributed: Distributed) -> StreamingBatches:
        return StreamingBatches(self, batch_size, seed, distributed)

    def read(self, groups: Sequence[RowGroup], generator: np.random.Generator) -> dict[str, np.ndarray]:
        """The split's rows of `groups`, shuffled together, each column converted.

        One row group is decoded at a time and its rows are scattered straight to their shuffled
        places: the window is the one copy, besides a row group's decoded buffers."""
        total = sum(group.rows for group in groups)
        destination = np.empty(total, dtype=np.int64)
        destination[generator.permutation(total)] = np.arange(total)  # row k of the window goes to destination[k]
        columns: dict[str, np.ndarray] = {}
        start = 0
        for group in groups:
            with self._open(group.path) as file:
                table = file.read_row_group(group.index, columns=self.columns)
            wanted = None  # every row
            if group.wanted:
                wanted = np.flatnonzero(np.unpackbits(np.frombuffer(group.wanted, np.uint8), count=table.num_rows))
            places = destination[start : start + group.rows]
            for column in self.columns:
                values = column_values(table, column)
                if column not in columns:
                    columns[column] = np.empty((total, *values.shape[1:]), dtype=values.dtype)
                columns[column][places] = values if wanted is None else values[wanted]
            start += group.rows
            self.row_groups_read += 1
        return {name: self.convert[name](values) if name in self.convert else values for name, values in columns.items()}


class StreamingBatches:
    """This rank's batches of a `ShardRows`, read ahead by a background thread.

    Epoch e: the row groups in the order of a generator seeded with (seed, e); this rank's are
    every world_size-th from its rank on; windows of `window_row_groups` of them, each window's
    rows in the order of a generator seeded with (seed, e, rank, window). A batch that crosses
    a window or an epoch continues in the next, so every batch is full."""

    def __init__(self, rows: ShardRows, batch_size: int, seed: int, distributed: Distributed):
        if len(rows.row_groups) < distributed.world_size:
            raise ValueError(f"{len(rows.row_groups)} row groups cannot be shared by {distributed.world_size} ranks: "
                             "read this split in memory (loader stream='off')")
        self.rows, self.seed, self.distributed = rows, seed, distributed
        self.batch_size = batch_size // distributed.world_size
        self.epoch, self.position = 0, 0
        self._thread: threading.Thread | None = None
        self._start()

    # --- the order, regenerated from (seed, epoch, rank) ------------------------------------

    def rank_row_groups(self, epoch: int) -> list[RowGroup]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows.row_groups))
        mine = order[self.distributed.rank :: self.distributed.world_size]
        return [self.rows.row_groups[i] for i in mine]

    def _windows(self, epoch: int, position: int) -> Iterator[Window]:
        """Every window from the one holding `position` of `epoch` on, forever."""
        size = self.rows.window_row_groups
        while True:
            groups = self.rank_row_groups(epoch)
            start = 0
            for number in range(0, len(groups), size):
                chosen = groups[number : number + size]
                rows = sum(group.rows for group in chosen)
                if start + rows > position:
                    generator = np.random.default_rng([self.seed, epoch, self.distributed.rank, number // size])
                    yield Window(self.rows.read(chosen, generator), epoch, start, len(chosen),
                                 last=number + size >= len(groups))
                start += rows
            epoch, position = epoch + 1, 0

    # --- the background reader ---------------------------------------------------------------

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        # a window is read only once a slot is free, so the reader holds at most prefetch_windows
        # windows, read or being read, besides the one in use
        self._slots = threading.Semaphore(self.rows.prefetch_windows)
        self._window: Window | None = None
        self._offset = 0
        self._thread = threading.Thread(target=self._read_ahead, daemon=True,
                                        args=(self.epoch, self.position, self._stop, self._slots, self._queue))
        self._thread.start()

    def _read_ahead(self, epoch: int, position: int, stop: threading.Event, slots: threading.Semaphore,
                    windows: queue.Queue) -> None:
        try:
            upcoming = self._windows(epoch, position)
            while True:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                windows.put(next(upcoming))
        except BaseException as error:  # handed to the consumer, which raises it
            windows.put(error)

    def close(self) -> None:
        """Stop the reader (it ends within a tenth of a second once its window is read)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _next_window(self) -> Window:
        item = self._queue.get()
        self._slots.release()
        if isinstance(item, BaseException):
            raise item
        # a resumed source starts inside its first window
        self._window, self._offset = item, max(0, self.position - item.start) if item.epoch == self.epoch else 0
        return item

    # --- the BatchSource interface -----------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        parts, wanted = [], self.batch_size
        while wanted:
            window = self._window if self._window is not None and self._offset < len(self._window) else self._next_window()
            take = min(wanted, len(window) - self._offset)
            parts.append({name: values[self._offset : self._offset + take] for name, values in window.columns.items()})
            self._offset += take
            wanted -= take
            self.epoch, self.position = window.epoch, window.start + self._offset
            if window.last and self._offset == len(window):
                self.epoch, self.position = self.epoch + 1, 0
        if len(parts) == 1:  # slices of the window: no copy
            return {name: torch.from_numpy(values) for name, values in parts[0].items()}
        return {name: torch.from_numpy(np.concatenate([part[name] for part in parts])) for name in parts[0]}

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "num_items": self.rows.num_rows,
                "rank": self.distributed.rank, "world_size": self.distributed.world_size}

    def load_state_dict(self, state: Mapping) -> None:
        if state["num_items"] != self.rows.num_rows:
            raise ValueError(f"checkpoint was made on {state['num_items']} rows, this split has {self.rows.num_rows}")
        self.close()
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        if (state.get("rank"), state.get("world_size")) != (self.distributed.rank, self.distributed.world_size):
            # another rank's position means nothing here: start this rank's next epoch afresh
            warnings.warn(f"a stream's state from rank {state.get('rank')} of {state.get('world_size')} resumed on rank "
                          f"{self.distributed.rank} of {self.distributed.world_size}: it goes on at the next epoch")
            self.epoch, self.position = self.epoch + 1, 0
        self._start()
