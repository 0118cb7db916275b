"""The row cache gives back what the decoders gave it: each file's split signatures, work keys
and time spans, whatever the batches, layouts and order the files come in."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from corpora.ingest import DecodedFile, TableRows
from corpora.row_cache import Placement, RowCache, cache_key
from corpora.shards import TableSpec

SPECS = [TableSpec("items", None, {"n": pa.int64()})]


def decoded_file(rng: np.random.Generator, number: int) -> DecodedFile:
    """A file whose arrays vary in count from file to file (so batches hold many layouts), with
    thumbnails of an odd byte count (so records do not start on a word) in some files only."""
    rows = int(rng.integers(0, 5))
    arrays = DecodedFile(f"content-{number}", {"items": TableRows(None, {"n": np.arange(rows)})})
    if rows:
        arrays.signatures["items"] = rng.integers(0, 2**63, rows, dtype=np.uint64)
    if number % 3:
        arrays.signatures["thumbs"] = rng.integers(0, 256, (int(rng.integers(1, 4)), 7), dtype=np.uint8)
    if number % 4:
        arrays.work_keys = rng.integers(0, 2**63, int(rng.integers(0, 9)), dtype=np.uint64)
    if number % 5 == 0:
        start = rng.integers(0, 100, int(rng.integers(0, 4)))
        arrays.time_spans = np.stack([start, start + 10], axis=1).astype(np.int64)
    return arrays


def test_stacked_arrays_are_each_files_own_in_the_order_asked(tmp_path):
    rng = np.random.default_rng(0)
    cache = RowCache(tmp_path, cache_key("test", {}), SPECS)
    files = {f"{number:064x}": decoded_file(rng, number) for number in range(60)}
    writer = cache.writer(batch_files=7, batch_megabytes=1)
    for sha256, decoded in files.items():
        writer.add_decoded(sha256, decoded)
    writer.flush()

    known = cache.load_index()  # read back from the files, not the writer's memory
    asked = list(rng.permutation(sorted(files))[:45])  # a subset, out of order, across batches
    stacked, time_spans = cache.stacked_arrays(Placement([known[sha256] for sha256 in asked]))

    def expected(name: str) -> tuple[np.ndarray, np.ndarray]:
        arrays = [files[sha256].work_keys if name == "work_keys"
                  else files[sha256].signatures.get(name.split(":", 1)[1]) for sha256 in asked]
        owners = np.repeat(np.arange(len(asked)), [0 if array is None else len(array) for array in arrays])
        return np.concatenate([array for array in arrays if array is not None]), owners

    assert set(stacked) == {"signature:items", "signature:thumbs", "work_keys"}
    for name, (values, owners) in stacked.items():
        want_values, want_owners = expected(name)
        np.testing.assert_array_equal(owners, want_owners, err_msg=name)
        np.testing.assert_array_equal(values, want_values.astype(values.dtype), err_msg=name)
    with_spans = {index for index, sha256 in enumerate(asked) if files[sha256].time_spans is not None}
    assert set(time_spans) == with_spans
    for index in with_spans:
        np.testing.assert_array_equal(time_spans[index], files[asked[index]].time_spans)
