"""Parquet shards that carry fixed-shape tensors.

A tensor column is `fixed_size_binary(prod(shape) * itemsize)`: one contiguous buffer that
reads back into numpy without a per-element decode (a `list<uint8>` column decodes about
10x slower). The shape and dtype travel in the schema metadata under
`atelier.tensor.<column>`, so a shard describes itself.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.atomic import atomic_path, atomic_write
from common.hashing import sha256_file

TENSOR_METADATA_PREFIX = "atelier.tensor."
COMPRESSION = "zstd"
MIN_ROW_GROUP, MAX_ROW_GROUP = 1024, 4096


@dataclass(frozen=True)
class TensorColumn:
    name: str
    shape: tuple[int, ...]
    dtype: str = "uint8"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def metadata(self) -> dict[bytes, bytes]:
        value = {"shape": list(self.shape), "dtype": self.dtype}
        return {(TENSOR_METADATA_PREFIX + self.name).encode(): json.dumps(value).encode()}


@dataclass(frozen=True)
class TableSpec:
    """What one output table of a corpus looks like: a tensor column (or none) plus plain columns."""

    name: str
    tensor: TensorColumn | None
    columns: Mapping[str, pa.DataType] = field(default_factory=dict)

    def schema(self) -> pa.Schema:
        fields = [pa.field(name, dtype) for name, dtype in self.columns.items()]
        if self.tensor is None:
            return pa.schema(fields)
        tensor_field = pa.field(self.tensor.name, pa.binary(self.tensor.nbytes), nullable=False)
        return pa.schema([tensor_field, *fields], metadata=self.tensor.metadata())

    @property
    def row_nbytes(self) -> int:
        # the tensor plus a rough allowance for the plain columns, to size shards
        return (self.tensor.nbytes if self.tensor else 0) + 16 * len(self.columns) + 96


def integer_values(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A null-free integer column as numpy, read from its buffer: `to_numpy` imports pandas
    (half a second) the first time, which a one-file change would otherwise pay."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.null_count:
        raise ValueError("integer_values reads columns without nulls")
    dtype = np.dtype(f"{'i' if pa.types.is_signed_integer(values.type) else 'u'}{values.type.bit_width // 8}")
    if not len(values):
        return np.zeros(0, dtype)
    return np.frombuffer(values.buffers()[1], dtype)[values.offset : values.offset + len(values)]


def arrow_array(values: Sequence, kind: pa.DataType) -> pa.Array:
    """`pa.array(values, type=kind)` for the plain types the corpora write, built from buffers:
    `pa.array` imports pandas (about half a second) to ask whether `values` is a pandas object,
    which a one-file change to a corpus would otherwise pay in every fresh process."""
    if pa.types.is_dictionary(kind) and pa.types.is_string(kind.value_type):
        codes = {value: code for code, value in enumerate(dict.fromkeys(values))}  # first appearance, as pa.array
        indices = arrow_array(np.fromiter((codes[value] for value in values), np.int64, len(values)), kind.index_type)
        return pa.DictionaryArray.from_arrays(indices, arrow_array(list(codes), kind.value_type))
    if pa.types.is_list(kind) and pa.types.is_integer(kind.value_type):  # lists of numbers, none of them null
        lengths = np.fromiter(map(len, values), np.int32, len(values))
        offsets = np.zeros(len(values) + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(chain.from_iterable(values), np.int64, int(offsets[-1]))
        return pa.ListArray.from_arrays(arrow_array(offsets, pa.int32()), arrow_array(flat, kind.value_type))
    plain = pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_boolean(kind) or \
        pa.types.is_integer(kind) or pa.types.is_floating(kind)
    if not plain:
        return pa.array(values, type=kind)
    numeric = isinstance(values, np.ndarray) and values.dtype != object  # no None to look for, row by row
    # `None in values` runs in C and nearly always finds none: the mask per value only when it does
    missing = None if numeric or None not in values else np.fromiter((value is None for value in values), bool,
                                                                      len(values))
    validity = pa.py_buffer(np.packbits(~missing, bitorder="little")) if missing is not None and missing.any() else None
    if validity is not None:  # nulls: a placeholder in the data, a cleared bit in the validity
        empty = b"" if pa.types.is_binary(kind) else "" if pa.types.is_string(kind) else 0
        values = [empty if value is None else value for value in values]
    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        data, joined = list(values), None
        if pa.types.is_string(kind):
            text = "".join(data)
            # ASCII text (paths, hashes, names: nearly always) has a byte per character: one encode
            data, joined = (data, text.encode()) if text.isascii() else ([value.encode() for value in data], None)
        offsets = np.zeros(len(data) + 1, np.int32)
        np.cumsum(np.fromiter(map(len, data), np.int64, len(data)), out=offsets[1:])
        joined = b"".join(data) if joined is None else joined
        return pa.Array.from_buffers(kind, len(data), [validity, pa.py_buffer(offsets), pa.py_buffer(joined)])
    if pa.types.is_boolean(kind):
        bits = np.packbits(np.asarray(values, dtype=bool), bitorder="little")
        return pa.Array.from_buffers(kind, len(values), [validity, pa.py_buffer(bits)])
    code = "f" if pa.types.is_floating(kind) else "i" if pa.types.is_signed_integer(kind) else "u"
    numbers = np.ascontiguousarray(values, dtype=f"{code}{kind.bit_width // 8}")
    return pa.Array.from_buffers(kind, len(numbers), [validity, pa.py_buffer(numbers)])


def arrow_table(columns: Sequence[Sequence], schema: pa.Schema) -> pa.Table:
    """A table of `schema` from one sequence of values per field (see `arrow_array`)."""
    return pa.Table.from_arrays([arrow_array(values, field.type) for values, field in zip(columns, schema)],
                                schema=schema)


def arrow_rows(rows: Sequence[Sequence], schema: pa.Schema) -> pa.Table:
    """A table of `schema` from tuples of values in field order."""
    columns = list(zip(*rows)) if rows else [()] * len(schema)
    return arrow_table(columns, schema)


def arrow_records(records: Sequence[Mapping], schema: pa.Schema) -> pa.Table:
    """A table of `schema` from dicts keyed by field name (`pa.Table.from_pylist` without pandas)."""
    return arrow_table([[record[name] for record in records] for name in schema.names], schema)


def tensor_table(spec: TableSpec, tensors: np.ndarray | None, columns: Mapping[str, Sequence]) -> pa.Table:
    """Build a table from a stacked tensor array (N, *shape) and plain column values."""
    schema = spec.schema()
    plain = [arrow_array(columns[name], schema.field(name).type) for name in spec.columns]
    if spec.tensor is None:
        return pa.Table.from_arrays(plain, schema=schema)
    tensors = np.ascontiguousarray(tensors, dtype=spec.tensor.dtype)
    expected = (len(tensors), *spec.tensor.shape)
    if tensors.shape != expected:
        raise ValueError(f"{spec.name}.{spec.tensor.name}: shape {tensors.shape} != {expected}")
    buffer = pa.py_buffer(tensors.tobytes())
    tensor_array = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(spec.tensor.nbytes), len(tensors), [None, buffer]
    )
    return pa.Table.from_arrays([tensor_array, *plain], schema=schema)


def tensor_column_of(schema: pa.Schema, column: str) -> TensorColumn:
    raw = (schema.metadata or {}).get((TENSOR_METADATA_PREFIX + column).encode())
    if raw is None:
        raise KeyError(f"column {column!r} carries no tensor metadata")
    value = json.loads(raw)
    return TensorColumn(column, tuple(value["shape"]), value["dtype"])


def tensors_from_table(table: pa.Table, column: str) -> np.ndarray:
    """The tensor column as one (N, *shape) numpy array."""
    spec = tensor_column_of(table.schema, column)
    chunks = table.column(column).chunks
    parts = [
        np.frombuffer(chunk.buffers()[1], dtype=np.uint8)[
            chunk.offset * spec.nbytes : (chunk.offset + len(chunk)) * spec.nbytes
        ]
        for chunk in chunks
        if len(chunk)
    ]
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty(0, dtype=np.uint8)
    return flat.view(spec.dtype).reshape(len(table), *spec.shape)


def read_parquet(path: str | Path, columns: Sequence[str] | None = None, dictionary: Sequence[str] = ()) -> pa.Table:
    """One Parquet file as a table (the `dictionary` columns as dictionary arrays, as Parquet
    stores them); unlike `pq.read_table`, without importing pyarrow.dataset (about 40 MB and a
    second for a process that only reads a file)."""
    with pq.ParquetFile(path, read_dictionary=list(dictionary) or None) as file:
        # one thread: the files read this way are small, and handing their columns to the thread
        # pool cost more than it saved (most on a loaded machine)
        return file.read(columns=columns, use_threads=False)


def read_shards(paths: Iterable[str | Path], columns: Sequence[str] | None = None) -> pa.Table:
    tables = [pq.read_table(path, columns=columns) for path in paths]
    if not tables:
        raise ValueError("no shards to read")
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def row_group_size_for(row_nbytes: int, target_group_bytes: int = 8 << 20) -> int:
    return int(min(MAX_ROW_GROUP, max(MIN_ROW_GROUP, target_group_bytes // max(row_nbytes, 1))))


PARQUET_OPTIONS = {"compression": COMPRESSION, "write_statistics": False}


def write_parquet(table: pa.Table, path: str | Path, row_group_size: int | None = None) -> Path:
    """Write one Parquet file atomically (temp file beside it, fsync, rename)."""
    return atomic_write(path, lambda file: pq.write_table(table, file, row_group_size=row_group_size or MAX_ROW_GROUP,
                                                          **PARQUET_OPTIONS))


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the corpus output folder
    rows: int
    sha256: str
    bytes: int
    key: str = ""  # what the shard was made of (see ShardWriter.cut); "" for a shard never reused

    def to_json(self) -> dict:
        info = {"path": self.path, "rows": self.rows, "sha256": self.sha256, "bytes": self.bytes}
        return {**info, "key": self.key} if self.key else info


class ShardWriter:
    """Rows in, in order; shards of about `shard_megabytes` out, each written atomically. A
    shard is streamed to its file a row group at a time, so the writer holds about two row
    groups' rows, never a whole shard's: Parquet encodes and compresses one on a thread (without
    the GIL) while the caller builds the next."""

    def __init__(self, spec: TableSpec, folder: Path, relative_to: Path, shard_megabytes: int):
        self.spec, self.folder, self.relative_to = spec, folder, relative_to
        self.schema = spec.schema()
        self.rows_per_shard = max(1, (shard_megabytes << 20) // spec.row_nbytes)
        self.row_group = row_group_size_for(spec.row_nbytes)
        self.parts: list[pa.Table] = []  # rows not yet written
        self.buffered = 0  # rows of the current shard, written or not
        self.shards: list[ShardInfo] = []
        self._file: tuple[ExitStack, pq.ParquetWriter, Path] | None = None  # the shard being written
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._writing: Future | None = None  # the row group on the thread; one at a time bounds the memory

    def append(self, table: pa.Table) -> None:
        while len(table):
            take = min(len(table), self.rows_per_shard - self.buffered)
            self.parts.append(table.slice(0, take))
            self.buffered += take
            table = table.slice(take)
            self._write_row_groups()
            if self.buffered == self.rows_per_shard:
                self._finish_shard()

    def close(self) -> list[ShardInfo]:
        if self.buffered or not self.shards:  # an empty table still gets its one (empty) shard
            self._finish_shard()
        self._thread.shutdown()
        return self.shards

    def cut(self, key: str = "") -> None:
        """End the shard being written here (if it has rows), recording `key` with it."""
        if self.buffered:
            self._finish_shard(key)

    def adopt(self, path: Path, info: dict) -> bool:
        """Take a shard written before (`info`: its manifest entry) as the next one, by a hard
        link (a copy where links fail); False, taking nothing, if the file is not as recorded."""
        if self.buffered or not path.is_file() or path.stat().st_size != info["bytes"]:
            return False
        target = self._path()
        try:
            os.link(path, target)
        except OSError:
            with atomic_path(target) as temporary:
                shutil.copyfile(path, temporary)
        self.shards.append(ShardInfo(path=str(target.relative_to(self.relative_to)), rows=info["rows"],
                                     sha256=info["sha256"], bytes=info["bytes"], key=info.get("key", "")))
        return True

    def _path(self) -> Path:
        return self.folder / f"{self.spec.name}-{len(self.shards):05d}.parquet"

    def _write_row_groups(self, last: bool = False) -> None:
        """Write every full row group buffered (and with `last`, what remains): one contiguous
        chunk per column and row group, so a shard's bytes never depend on how its rows arrived."""
        pending = sum(len(part) for part in self.parts)
        while pending >= self.row_group or (last and pending):
            rows = pa.concat_tables(self.parts)
            group = rows.slice(0, self.row_group).combine_chunks()
            self.parts = [rows.slice(len(group))] if len(rows) > len(group) else []
            pending -= len(group)
            if self._file is None:
                stack = ExitStack()
                temporary = stack.enter_context(atomic_path(self._path()))
                writer = stack.enter_context(pq.ParquetWriter(temporary, self.schema, **PARQUET_OPTIONS))
                self._file = (stack, writer, temporary)
            self._wait()
            self._writing = self._thread.submit(self._file[1].write_table, group, row_group_size=self.row_group)

    def _wait(self) -> None:
        """Until the row group on the thread is written (raising what writing it raised)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def _finish_shard(self, key: str = "") -> None:
        path = self._path()
        self._write_row_groups(last=True)
        self._wait()
        if self._file is None:
            write_parquet(arrow_rows([], self.schema), path, row_group_size=self.row_group)
        else:
            self._file[0].close()  # the Parquet footer, then the atomic rename
            self._file = None
        self.shards.append(ShardInfo(path=str(path.relative_to(self.relative_to)), rows=self.buffered,
                                     sha256=sha256_file(path), bytes=path.stat().st_size, key=key))
        self.parts, self.buffered = [], 0


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 HxW or HxWxC array as PNG (for previews and galleries)."""
    from PIL import Image

    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", optimize=True)
    return out.getvalue()
