"""The streaming batch source (corpora/streaming.py) on real Parquet shards the tests write:
block shuffle, resume, ranks, bounded read-ahead, splits, and a family trained through `fit`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from corpora.readers import read_split, training_rows
from corpora.shards import TableSpec, TensorColumn, tensor_table, write_parquet
from corpora.streaming import ShardRows, StreamingBatches
from models.batches import InMemoryRows, LoaderConfig
from models.distributed import Distributed
from models.music_vae.testing import token_windows
from models.music_vae.training import MusicVaeFamily, training_windows
from models.music_vae.config import MusicVaeConfig
from models.trainer import fit, load_checkpoint

GROUP_ROWS, SHARDS, SHARD_ROWS = 10, 3, 50
SPEC = TableSpec("items", TensorColumn("pixels", (2, 2)), {"row": pa.int64(), "split": pa.string()})


def split_of(row: int) -> str:
    # every 5th row held out, every 7th (not held out) in the gap a split by time leaves
    return "heldout" if row % 5 == 0 else "gap" if row % 7 == 0 else "train"


def write_table(folder: Path, spec: TableSpec = SPEC, shards: int = SHARDS, shard_rows: int = SHARD_ROWS,
                tensors=None, split=split_of) -> Path:
    """Shards of `spec` (rows numbered across shards; pixels = row mod 256 unless `tensors` given)
    in row groups of GROUP_ROWS, and the manifest that lists them."""
    entries = []
    for shard in range(shards):
        rows = np.arange(shard * shard_rows, (shard + 1) * shard_rows)
        values = (np.broadcast_to((rows % 256).astype(np.uint8)[:, None, None], (len(rows), *spec.tensor.shape))
                  if tensors is None else tensors[rows])
        table = tensor_table(spec, values, {"row": rows, "split": [split(int(row)) for row in rows]})
        path = write_parquet(table, folder / f"{spec.name}-{shard:05d}.parquet", row_group_size=GROUP_ROWS)
        entries.append({"path": path.name})
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"tables": {spec.name: {"shards": entries}}}))
    return manifest


def shard_rows(folder: Path, window_row_groups: int = 2, prefetch: int = 2, split: str = "train") -> ShardRows:
    return ShardRows(sorted(folder.glob("items-*.parquet")), ["row", "pixels"], split, window_row_groups, prefetch)


def rows_of(source: StreamingBatches, count: int) -> np.ndarray:
    """The row ids of the next `count` rows, checking every batch's columns stay aligned."""
    out = []
    while sum(map(len, out)) < count:
        batch = next(source)
        assert torch.equal(batch["pixels"][:, 0, 0], (batch["row"] % 256).to(torch.uint8))
        out.append(batch["row"].numpy())
    return np.concatenate(out)[:count]


TRAIN_ROWS = [row for row in range(SHARDS * SHARD_ROWS) if split_of(row) == "train"]


def test_block_shuffle_visits_every_train_row_once_per_epoch_in_a_new_order(tmp_path):
    write_table(tmp_path)
    rows = shard_rows(tmp_path)
    assert rows.num_rows == len(TRAIN_ROWS)
    source = rows.batches(batch_size=7, seed=3, distributed=Distributed())  # 7 divides neither window nor epoch
    try:
        first, second = np.split(rows_of(source, 2 * rows.num_rows), 2)
    finally:
        source.close()
    assert sorted(first) == TRAIN_ROWS and sorted(second) == TRAIN_ROWS  # held-out and gap rows never come
    assert list(first) != list(second) and list(first) != sorted(first)
    heldout = shard_rows(tmp_path, split="heldout").batches(batch_size=5, seed=0, distributed=Distributed())
    try:
        assert all(split_of(int(row)) == "heldout" for row in rows_of(heldout, 40))
    finally:
        heldout.close()


def test_reads_parse_each_shard_footer_once_and_take_the_split_from_the_opening(tmp_path):
    write_table(tmp_path)
    rows = shard_rows(tmp_path)
    for seed in (0, 1):  # every row group twice: the footers were parsed when the split was read
        read = rows.read(rows.row_groups, np.random.default_rng(seed))
        assert sorted(read["row"].tolist()) == TRAIN_ROWS
    assert rows._footer.cache_info().misses == SHARDS


def test_a_resumed_stream_yields_the_batches_of_an_uninterrupted_one(tmp_path):
    write_table(tmp_path)
    rows = shard_rows(tmp_path, window_row_groups=3, prefetch=1)
    uninterrupted = rows.batches(batch_size=8, seed=1, distributed=Distributed())
    for _ in range(17):  # past the end of the first epoch (about 100 rows) and into a window of the second
        next(uninterrupted)
    state = uninterrupted.state_dict()
    assert state["epoch"] == 1 and state["position"] > 0
    torch.save(state, tmp_path / "state.pt")
    resumed = rows.batches(batch_size=8, seed=1, distributed=Distributed())
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    try:
        for _ in range(30):
            expected, got = next(uninterrupted), next(resumed)
            assert all(torch.equal(expected[name], got[name]) for name in expected)
    finally:
        uninterrupted.close()
        resumed.close()


def test_ranks_read_disjoint_row_groups_whose_union_is_the_split(tmp_path):
    write_table(tmp_path)
    rows, world = shard_rows(tmp_path), 3
    sources = [rows.batches(batch_size=6, seed=2, distributed=Distributed(rank=r, world_size=world)) for r in range(world)]
    try:
        for epoch in (0, 1):
            shares = [source.rank_row_groups(epoch) for source in sources]
            groups = [(group.path, group.index) for share in shares for group in share]
            assert len(groups) == len(set(groups)) == len(rows.row_groups)
        read = [set(rows_of(source, sum(group.rows for group in source.rank_row_groups(0)))) for source in sources]
    finally:
        for source in sources:
            source.close()
    assert all(not a & b for i, a in enumerate(read) for b in read[i + 1 :])
    assert sorted(set().union(*read)) == TRAIN_ROWS


def test_the_read_ahead_is_bounded_by_the_window_not_the_corpus(tmp_path):
    write_table(tmp_path, shards=4, shard_rows=100, split=lambda row: "train")  # 40 row groups
    window_groups, prefetch = 2, 1
    rows = shard_rows(tmp_path, window_row_groups=window_groups, prefetch=prefetch)
    source = rows.batches(batch_size=4, seed=0, distributed=Distributed())
    try:
        for _ in range(3):  # rows of the first window only
            next(source)
        deadline = time.monotonic() + 30
        while source._queue.qsize() < prefetch and time.monotonic() < deadline:
            time.sleep(0.01)  # waiting for the reader to run as far ahead as it may
        assert source._queue.qsize() == prefetch
        # the window in use and the ones read ahead, nothing more
        assert rows.row_groups_read == window_groups * (1 + prefetch) < len(rows.row_groups)
    finally:
        source.close()


def test_the_loader_config_chooses_memory_or_stream_and_the_metrics_read_at_most_eval_rows(tmp_path):
    manifest = write_table(tmp_path)
    in_memory = training_rows(manifest, "items", ["row"], LoaderConfig())
    assert isinstance(in_memory, InMemoryRows) and sorted(in_memory.columns["row"].tolist()) == TRAIN_ROWS
    tiny_threshold = LoaderConfig(stream_above_megabytes=1e-4)
    assert isinstance(training_rows(manifest, "items", ["row"], tiny_threshold), ShardRows)
    assert isinstance(training_rows(manifest, "items", ["row"], LoaderConfig(stream="on")), ShardRows)
    capped = read_split(manifest, "items", ["row", "pixels"], max_rows=12)
    spread = [TRAIN_ROWS[i] for i in np.linspace(0, len(TRAIN_ROWS) - 1, 12).round().astype(int)]
    assert capped["train"]["row"].tolist() == spread and len(capped["heldout"]["pixels"]) == 12  # the whole split, not its start
    whole = read_split(manifest, "items", ["row"])
    assert whole["train"]["row"].tolist() == TRAIN_ROWS


def music_config(steps: int) -> MusicVaeConfig:
    return MusicVaeConfig(kind="chorale", steps_per_window=8, embed_dim=8, encoder_hidden=16, decoder_hidden=16,
                          decoder_layers=1, latent_dim=4, batch_size=8, sampling_rate=20.0, beta_rate=0.9,
                          free_bits=0.0, steps=steps, seed=5)


def test_a_family_trains_from_a_stream_and_resumes_bit_exact(tmp_path):
    spec = TableSpec("chorale_windows", TensorColumn("voices", (4, 8)), {"split": pa.string()})
    manifest = write_table(tmp_path / "corpus", spec, shards=2, shard_rows=40,
                           tensors=token_windows(n=80, voices=4, steps=8, seed=1), split=lambda row: "train")
    config, loader = music_config(steps=6), LoaderConfig(stream="on", shuffle_window_megabytes=1e-3)

    def run(folder: Path, stop_after: int | None = None):
        family = MusicVaeFamily(config, training_windows(manifest, config, loader))
        assert isinstance(family.rows, ShardRows)
        calls = iter(range(1_000))
        stop = None if stop_after is None else (lambda: next(calls) >= stop_after)
        return fit(family, config.trainer_config(checkpoint_every=100), folder, should_stop=stop)

    whole = run(tmp_path / "whole")
    assert whole.finished and np.isfinite(whole.metrics["loss"])
    assert run(tmp_path / "killed", stop_after=3).step == 3
    resumed = run(tmp_path / "killed")
    assert (resumed.resumed_from, resumed.step) == (3, 6)
    expected = load_checkpoint(whole.checkpoint)["modules"]["vae"]
    got = load_checkpoint(resumed.checkpoint)["modules"]["vae"]
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    with pytest.raises(ValueError, match="made on 80"):  # a checkpoint of other data is refused
        fit(MusicVaeFamily(config, token_windows(n=10, voices=4, steps=8)), config.trainer_config(steps=7),
            tmp_path / "whole")
