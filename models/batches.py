"""Where the trainer's batches come from: a family's training rows, and the resumable batch
sources drawn from them.

A family holds its training split as `Rows`: `InMemoryRows` (every row as tensors, on the CPU or
the GPU) or, on the training side, `corpora.streaming.ShardRows` (row groups read from the
Parquet shards a window at a time). The trainer asks the rows for a `BatchSource` and hands each
batch, a dict of column tensors, to `family.make_batch`. A source's whole state is (seed, epoch,
position): a resumed source rebuilds its epoch's order and skips to the position, so a killed run
goes on with exactly the batches an uninterrupted one gets. docs/streaming.md has the design.

Only torch and numpy here: models/ ships with each registered model, which never reads shards.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from models.distributed import Distributed, local_slice

Batch = dict[str, torch.Tensor]
# Applied to a column's numpy values as they are read (a whole split in memory, or one streamed
# window): what a family does once per row, e.g. class names to indices, frames resized.
Convert = Callable[[np.ndarray], np.ndarray]


@dataclass
class LoaderConfig:
    """How a run reads its training split (TrainingRequest.loader overrides these)."""

    stream: str = "auto"  # "auto": stream a table bigger than stream_above_megabytes; "on"; "off"
    stream_above_megabytes: float = 2048.0  # uncompressed size of the table's shards
    shuffle_window_megabytes: float = 128.0  # row groups shuffled together; memory holds a few windows
    prefetch_windows: int = 1  # windows read ahead by a background thread
    eval_rows: int = 10_000  # at most this many rows of each split a metric reads


@runtime_checkable
class BatchSource(Protocol):
    """An endless, resumable stream of batches: this rank's share of each global batch."""

    def __next__(self) -> Batch: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: Mapping) -> None: ...

    def close(self) -> None: ...  # stop any reader behind it


@runtime_checkable
class Rows(Protocol):
    """A family's training rows: the number of them, each column's per-row shape, and batches."""

    num_rows: int

    def row_shape(self, column: str) -> tuple[int, ...]: ...

    def batches(self, batch_size: int, seed: int, distributed: Distributed) -> BatchSource: ...


class IndexSampler:
    """An endless stream of index batches, reshuffled every epoch.

    Its whole state is three integers (seed, epoch, position): epoch e's order is a
    permutation drawn from its own generator seeded with (seed, e), so a resumed run rebuilds
    it instead of storing it. A batch that crosses an epoch end continues into the next epoch,
    so every batch has `batch_size` items even when the data set is smaller than a batch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0):
        if num_items < 1:
            raise ValueError("the data set is empty")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=generator)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        parts, wanted = [], self.batch_size
        while wanted:
            take = min(wanted, self.num_items - self.position)
            parts.append(self._order[self.position : self.position + take])
            self.position += take
            wanted -= take
            if self.position == self.num_items:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
        return torch.cat(parts)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "num_items": self.num_items}

    def load_state_dict(self, state: Mapping) -> None:
        if state["num_items"] != self.num_items:
            raise ValueError(f"checkpoint was made on {state['num_items']} items, this data has {self.num_items}")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)


def as_tensor(values) -> torch.Tensor:
    """A column as a tensor, without a copy where numpy allows one (a read-only Parquet buffer
    is copied: torch must own what it may write)."""
    if isinstance(values, torch.Tensor):
        return values
    values = np.asarray(values)
    if values.dtype == object:
        raise TypeError("a column of Python objects (strings?) cannot be a tensor: convert it to numbers")
    return torch.from_numpy(values if values.flags.writeable else values.copy())


class InMemoryRows:
    """Every training row held as tensors: batches gather rows by index, on the rows' device
    (`to` moves them to a GPU, where a corpus that fits never crosses the bus again)."""

    def __init__(self, columns: Mapping[str, np.ndarray | torch.Tensor]):
        self.columns = {name: as_tensor(values) for name, values in columns.items()}
        lengths = {len(values) for values in self.columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns of different lengths: { {k: len(v) for k, v in self.columns.items()} }")
        self.num_rows = lengths.pop()

    def row_shape(self, column: str) -> tuple[int, ...]:
        return tuple(self.columns[column].shape[1:])

    def to(self, device: torch.device | str) -> None:
        self.columns = {name: values.to(device) for name, values in self.columns.items()}

    def batches(self, batch_size: int, seed: int, distributed: Distributed) -> InMemoryBatches:
        return InMemoryBatches(self, batch_size, seed, distributed)


class InMemoryBatches:
    """Every rank draws the same global batch of indices and gathers its own slice of it."""

    def __init__(self, rows: InMemoryRows, batch_size: int, seed: int, distributed: Distributed):
        self.rows, self.distributed = rows, distributed
        self.sampler = IndexSampler(rows.num_rows, batch_size, seed=seed)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        indices = local_slice(next(self.sampler), self.distributed)
        return {name: values[indices.to(values.device)] for name, values in self.rows.columns.items()}

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        self.sampler.load_state_dict(state)

    def close(self) -> None:
        pass


def in_memory_rows(columns: Rows | Mapping[str, np.ndarray | torch.Tensor]) -> Rows:
    """Rows as given, or arrays (a family built from arrays, as tests and benches do) held in memory."""
    return columns if isinstance(columns, Rows) else InMemoryRows(columns)
