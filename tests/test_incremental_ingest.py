"""The row cache: a changed corpus decodes only what changed and still lands on the version a
fresh ingest of the same files makes; a killed ingest keeps what it finished; real folders'
oddities (links in and out of the corpus, files that change while they are read) are ingested
or rejected with a reason, never lost from the accounting."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import corpora.grouping
import corpora.ingest
import corpora.row_cache
from corpora.images import IMAGES, ImageCorpusConfig
from corpora.midi import MIDI, MidiCorpusConfig
from common.hashing import sha256_file
from corpora.ingest import DecodeTask, IngestSettings, Rejected, _row_cache, decode_checked, ingest
from corpora.row_cache import CACHE_DIR, INDEX_SUFFIX, MIN_SMALL_BATCHES, NEAR_SUFFIX, read_index, write_index
from corpora.shards import read_shards
from tests.reliability._media import midi_bytes, write_pngs

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG = ImageCorpusConfig(resolution=12)
SETTINGS = IngestSettings(workers=1, heldout_percent=30, batch_files=8)


def run(raw: Path, out: Path):
    return ingest(IMAGES, CONFIG, raw, out, SETTINGS, progress=lambda message: None)


def fresh_version(raw: Path, scratch: Path) -> str:
    """What an ingest with no history makes of the same files."""
    shutil.rmtree(scratch, ignore_errors=True)
    return run(raw, scratch).version


def accounted(report) -> bool:
    c = report.counts
    return c["seen"] == c["ingested"] + c["rejected"] + c["duplicates"]


def test_a_change_decodes_only_what_changed_and_lands_on_the_fresh_version(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_pngs(raw, 40, seed=1)
    first = run(raw, out)
    assert first.decoded_files == 40 and first.counts["ingested"] == 40

    Image.fromarray(np.full((12, 12), 7, np.uint8)).save(raw / "class-0" / "added.png")
    added = run(raw, out)
    assert added.decoded_files == 1 and added.counts["ingested"] == 41 and accounted(added)
    assert added.version != first.version
    assert added.version == fresh_version(raw, tmp_path / "fresh")

    # a near copy of a picture already grouped: compared with the old files, it joins their group
    original = np.asarray(Image.open(raw / "class-0" / "00000.png"))
    Image.fromarray(np.clip(original.astype(int) + 2, 0, 255).astype(np.uint8)).save(raw / "class-2" / "near.png")
    near = run(raw, out)
    assert near.decoded_files == 1 and near.version == fresh_version(raw, tmp_path / "fresh")
    groups = pq.read_table(out / near.manifest["groups"]["path"]).to_pydict()
    group_of = dict(zip(groups["source_path"], groups["group"]))
    assert group_of["class-2/near.png"] == group_of["class-0/00000.png"]
    (raw / "class-2" / "near.png").unlink()

    Image.fromarray(np.full((12, 12), 9, np.uint8)).save(raw / "class-0" / "added.png")  # edited
    edited = run(raw, out)
    assert edited.decoded_files == 1 and edited.version == fresh_version(raw, tmp_path / "fresh")

    removed_bytes = (raw / "class-1" / "00001.png").read_bytes()
    (raw / "class-1" / "00001.png").unlink()
    removed = run(raw, out)
    assert removed.decoded_files == 0 and removed.counts["ingested"] == 40
    assert removed.version == fresh_version(raw, tmp_path / "fresh")
    rows = read_shards(removed.shard_paths("images"))
    assert "class-1/00001.png" not in rows.column("source_path").to_pylist()

    (raw / "class-0" / "added.png").unlink()  # back to the first corpus: its version again
    (raw / "class-1" / "00001.png").write_bytes(removed_bytes)
    back = run(raw, out)
    assert back.decoded_files == 0 and back.version == first.version


def test_a_change_rewrites_only_the_shards_around_it(tmp_path):
    """Shards end after files chosen by their content, so a file added in the middle changes the
    shard it lands in (and at most a neighbour); every other shard is the previous version's
    file, linked rather than written, and the result is what a fresh ingest writes."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    for seed in range(120):
        (raw / f"t{seed:03d}.mid").write_bytes(midi_bytes(seed))
    settings = IngestSettings(workers=1, shard_megabytes=1)  # about 3,600 notes a shard: several
    run_midi = lambda out: ingest(MIDI, MidiCorpusConfig(), raw, out, settings, progress=lambda message: None)

    def notes_shards(report) -> dict[str, int]:  # key -> inode
        shards = report.manifest["tables"]["notes"]["shards"]
        return {shard["key"]: (report.manifest_path.parent / shard["path"]).stat().st_ino for shard in shards}

    before = notes_shards(run_midi(out))
    (raw / "t060a.mid").write_bytes(midi_bytes(1000))  # in path order between t060 and t061
    changed = run_midi(out)
    after = notes_shards(changed)

    assert len(before) >= 5 and all(before)
    kept = [key for key in after if key in before]
    assert len(kept) >= len(before) - 2 and len(after) - len(kept) <= 2
    assert all(after[key] == before[key] for key in kept)  # the same file, not a copy
    assert changed.manifest["tables"] == run_midi(tmp_path / "fresh").manifest["tables"]


def wider_spans(index: Path) -> None:
    """An index from another layout: row spans that do not fit the cache's tables."""
    table = read_index(index)
    spans = table.column("row_spans").to_pylist()
    write_index(table.set_column(table.schema.get_field_index("row_spans"), "row_spans",
                                 pa.array([row + [0] for row in spans], pa.list_(pa.int64()))), index)


def cut_short(index: Path) -> None:
    """An index damaged on disk: its second half gone."""
    data = index.read_bytes()
    index.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [wider_spans, cut_short])
def test_a_batch_index_not_in_the_caches_layout_is_decoded_again_not_misread(tmp_path, damage):
    """A batch whose index cannot be read as this cache's (another layout, or a damaged file) is
    unreadable: its files are decoded again and the version is a fresh ingest's."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_pngs(raw, 20, seed=3)
    run(raw, out)
    index = sorted((out / CACHE_DIR).glob(f"*/*{INDEX_SUFFIX}"))[0]
    table = read_index(index)
    damage(index)

    Image.fromarray(np.full((12, 12), 5, np.uint8)).save(raw / "class-0" / "added.png")
    changed = run(raw, out)
    assert changed.decoded_files == 1 + table.num_rows and accounted(changed)
    assert changed.version == fresh_version(raw, tmp_path / "fresh")


def test_a_config_change_decodes_again_and_the_old_cache_goes(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_pngs(raw, 10, seed=2)
    run(raw, out)
    before = {p.name for p in (out / CACHE_DIR).iterdir() if p.is_dir()}
    other = ingest(IMAGES, ImageCorpusConfig(resolution=8), raw, out, SETTINGS, progress=lambda m: None)
    assert other.decoded_files == 10
    after = {p.name for p in (out / CACHE_DIR).iterdir() if p.is_dir()}
    assert len(after) == 1 and after.isdisjoint(before)


def index_files(out: Path) -> list[Path]:
    return list((out / CACHE_DIR).glob(f"*/*{INDEX_SUFFIX}"))


def test_a_corpus_edited_a_file_at_a_time_keeps_its_cache_batches_few(tmp_path):
    """Each change that decodes commits a cache batch of its own; once the small batches
    outnumber the full ones they are merged, and every version is still a fresh ingest's."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_pngs(raw, 32, seed=4)
    assert run(raw, out).decoded_files == 32 and len(index_files(out)) == 4  # batches of 8 files
    for number in range(10):  # without merging, 14 batches at the end
        Image.fromarray(np.full((12, 12), 10 + 20 * number, np.uint8)).save(raw / "class-0" / f"added-{number}.png")
        report = run(raw, out)
        assert report.decoded_files == 1 and accounted(report)
        full_batches = report.counts["seen"] // SETTINGS.batch_files
        assert len(index_files(out)) <= full_batches + MIN_SMALL_BATCHES + 1
    assert report.version == fresh_version(raw, tmp_path / "fresh")
    (raw / "class-0" / "added-0.png").unlink()  # the next shards are read from the merged batches
    removed = run(raw, out)
    assert removed.decoded_files == 0 and removed.version == fresh_version(raw, tmp_path / "fresh")


# Batches that close by their bytes (a few MIDI files each) long before they reach 100 files
BATCHES_CLOSED_BY_BYTES = IngestSettings(workers=1, heldout_percent=30, batch_files=100, batch_megabytes=0.01)


def write_pieces(raw: Path, seeds) -> None:
    for seed in seeds:
        (raw / f"piece-{seed:02d}").mkdir(parents=True)
        (raw / f"piece-{seed:02d}" / "a.mid").write_bytes(midi_bytes(seed))


def ingest_midi(raw: Path, out: Path):
    return ingest(MIDI, MidiCorpusConfig(), raw, out, BATCHES_CLOSED_BY_BYTES, progress=lambda message: None)


def test_batches_closed_by_their_bytes_are_full_ones_and_not_merged(tmp_path, monkeypatch):
    """The writer closes a batch when its rows reach `batch_megabytes` as it counts them, which
    is not the Parquet files' count: such a batch is full while its files are live, so a fresh
    ingest does not copy its batches into others."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_pieces(raw, range(24))
    written = []
    flush = corpora.row_cache.BatchWriter.flush

    def counted_flush(self, *args, **kwargs):
        written.append(len(self.pending))
        return flush(self, *args, **kwargs)

    monkeypatch.setattr(corpora.row_cache.BatchWriter, "flush", counted_flush)
    assert ingest_midi(raw, out).decoded_files == 24
    batches = [files for files in written if files]
    assert len(batches) >= 4 and max(batches) < 100  # closed by bytes, not by files
    assert len(index_files(out)) == len(batches)  # none merged

    write_pieces(raw, [99])
    assert ingest_midi(raw, out).decoded_files == 1 and len(index_files(out)) == len(batches) + 1


def kill_ingest_once(raw: Path, out: Path, done) -> None:
    """Run an ingest of `raw` in a child process (batches of 8 files) and SIGKILL it once `done()`."""
    script = ("import sys; from corpora.images import IMAGES, ImageCorpusConfig; "
              "from corpora.ingest import IngestSettings, ingest; "
              "ingest(IMAGES, ImageCorpusConfig(resolution=12), sys.argv[1], sys.argv[2], "
              "IngestSettings(workers=1, heldout_percent=30, batch_files=8, chunk_size=1))")
    child = subprocess.Popen([sys.executable, "-c", script, str(raw), str(out)], cwd=PROJECT_ROOT,
                             env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, start_new_session=True)
    deadline = time.monotonic() + 300
    while not done() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()


ONE_FILE_CHANGE_IN_A_FRESH_PROCESS = """
import json, sys
from corpora.images import IMAGES, ImageCorpusConfig
from corpora.midi import MIDI, MidiCorpusConfig
from corpora.ingest import IngestSettings, ingest
report = ingest(IMAGES, ImageCorpusConfig(resolution=12), sys.argv[1], sys.argv[2],
                IngestSettings(workers=1, heldout_percent=30, batch_files=8), progress=lambda message: None)
print(json.dumps({"decoded": report.decoded_files, "version": report.version, "pandas": "pandas" in sys.modules}))
"""


def test_a_one_file_change_does_not_import_pandas(tmp_path):
    """pyarrow imports pandas (half a second) on its first pa.array; an ingest builds its columns
    without it, so a fresh process that adds one file to a corpus never pays that."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_pngs(raw, 20, seed=4)
    run(raw, out)
    Image.fromarray(np.full((12, 12), 5, np.uint8)).save(raw / "class-0" / "added.png")
    child = subprocess.run([sys.executable, "-c", ONE_FILE_CHANGE_IN_A_FRESH_PROCESS, str(raw), str(out)],
                           cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["decoded"] == 1 and not result["pandas"]
    assert result["version"] == fresh_version(raw, tmp_path / "fresh")


def test_a_killed_ingest_keeps_the_batches_it_finished(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_pngs(raw, 300, seed=3)
    kill_ingest_once(raw, out, lambda: len(index_files(out)) >= 3)
    assert len(index_files(out)) >= 3, "the ingest did not commit three batches in time"
    assert not (out / "manifest.json").exists()  # nothing partial is visible to readers

    resumed = run(raw, out)
    assert 0 < resumed.decoded_files <= 300 - 3 * 8
    assert resumed.counts["ingested"] == 300 and accounted(resumed)
    assert resumed.version == fresh_version(raw, tmp_path / "fresh")


def test_a_killed_ingest_keeps_the_near_pairs_it_found(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_pngs(raw, 200, seed=7)
    for index in range(0, 30, 3):  # near copies sorted right after their originals: decoded early
        original = np.asarray(Image.open(raw / "class-0" / f"{index:05d}.png"))
        Image.fromarray(np.clip(original.astype(int) + 2, 0, 255).astype(np.uint8)).save(
            raw / "class-0" / f"{index:05d}-near.png")
    kill_ingest_once(raw, out, lambda: len(list((out / CACHE_DIR).glob(f"*/*{NEAR_SUFFIX}"))) >= 4)
    assert not (out / "manifest.json").exists(), "the ingest finished before it was killed"

    memo = _row_cache(IMAGES, CONFIG, out).load_near_memo()  # what the rerun starts from
    compared = memo.checked["images"]
    assert len(compared) >= 4 * 8  # the files of the batches committed before the kill
    sha = {path.name: sha256_file(path) for path in (raw / "class-0").iterdir()}
    assert {sha["00000-near.png"], sha["00000.png"]} in [set(pair) for pair in memo.pairs["images"]]

    pairs_compared = []  # thumbnail pairs the rerun compares, while decoding and at the split
    near_pairs = corpora.grouping.near_pairs

    def counting_near_pairs(queries, pool, rms, same_set, **blocks):
        pairs_compared.append(len(queries) * (len(queries) - 1) // 2 if same_set else len(queries) * len(pool))
        yield from near_pairs(queries, pool, rms, same_set, **blocks)

    monkeypatch.setattr(corpora.grouping, "near_pairs", counting_near_pairs)
    resumed = run(raw, out)
    # each pair with a file the killed run did not compare, once: the rerun's own files are
    # compared among themselves while decoding and not again at the split
    remaining = resumed.counts["ingested"] - len(compared)
    assert 0 < sum(pairs_compared) <= remaining * (remaining - 1) // 2 + remaining * len(compared)
    monkeypatch.undo()
    assert resumed.version == fresh_version(raw, tmp_path / "fresh")
    groups = pq.read_table(out / resumed.manifest["groups"]["path"]).to_pydict()
    group_of = dict(zip(groups["source_path"], groups["group"]))
    assert all(group_of[f"class-0/{i:05d}-near.png"] == group_of[f"class-0/{i:05d}.png"] for i in range(0, 30, 3))


def test_a_failed_near_search_fails_the_ingest_after_keeping_every_decoded_batch(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_pngs(raw, 40, seed=5)
    calls = []
    near_owner_pairs = corpora.ingest.near_owner_pairs

    def failing_on_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("no room for the thumbnails")
        return near_owner_pairs(*args, **kwargs)

    monkeypatch.setattr(corpora.ingest, "near_owner_pairs", failing_on_the_second_batch)
    with pytest.raises(RuntimeError, match="near-duplicate search stopped.*no room") as failure:
        run(raw, out)
    assert isinstance(failure.value.__cause__, MemoryError)
    assert not (out / "manifest.json").exists()
    assert len(index_files(out)) == 5  # 40 files in batches of 8, each committed once
    assert len(calls) == 2  # the batches after the failure were not compared
    monkeypatch.undo()
    resumed = run(raw, out)  # the first batch's comparisons are kept, the rest made at the split
    assert resumed.decoded_files == 0 and accounted(resumed)
    assert resumed.version == fresh_version(raw, tmp_path / "fresh")


def test_links_inside_are_followed_links_outside_refused(tmp_path):
    raw, out, outside = tmp_path / "raw", tmp_path / "out", tmp_path / "elsewhere"
    write_pngs(raw, 6, seed=4)
    write_pngs(outside, 1, seed=5)
    (raw / "linked").mkdir()
    os.symlink(raw / "class-0" / "00000.png", raw / "linked" / "same.png")  # inside: a copy of its target
    os.symlink(raw / "class-1", raw / "linked" / "folder")  # a folder inside: listed under its own name only
    os.symlink(raw, raw / "linked" / "loop")  # back up the tree: no loop
    os.symlink(outside / "class-0" / "00000.png", raw / "linked" / "outside.png")
    os.symlink(raw / "missing.png", raw / "linked" / "broken.png")
    report = run(raw, out)
    assert accounted(report)
    reasons = {r.source_path: r.error_type for r in report.rejections}
    assert reasons == {"linked/outside.png": "SymlinkOutsideCorpus", "linked/broken.png": "BrokenSymlink"}
    duplicates = {d["source_path"]: d["duplicate_of"] for d in report.manifest["duplicates"]}
    assert duplicates["linked/same.png"] == "class-0/00000.png"
    assert report.counts["seen"] == 6 + 3 and report.counts["ingested"] == 6


def test_a_file_that_changes_while_it_is_read_is_refused_and_read_again_next_time(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(path)
    with pytest.raises(Rejected, match="changed while it was being read"):
        decode_checked(IMAGES.decode, DecodeTask(str(path), "a.png", CONFIG, sha256="0" * 64))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_file_is_rejected_with_its_reason(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_pngs(raw, 4, seed=6)
    (raw / "class-0" / "00000.png").chmod(0)
    report = run(raw, out)
    assert {r.source_path: r.error_type for r in report.rejections} == {"class-0/00000.png": "PermissionError"}
    assert accounted(report)


def test_an_ingest_leaves_the_cyclic_garbage_collector_as_it_found_it(tmp_path):
    """An ingest turns Python's cyclic collector off (its per-file objects make no cycles) and
    back on while decoding, and allocates Arrow's buffers from the system allocator; the
    caller's settings are restored, also when the ingest fails."""
    import gc

    import pyarrow as pa

    raw = tmp_path / "raw"
    write_pngs(raw, 4, seed=8)
    assert gc.isenabled()
    callers_pool = pa.default_memory_pool().backend_name
    collecting, pools = [], []

    def progress(_) -> None:
        collecting.append(gc.isenabled())
        pools.append(pa.default_memory_pool().backend_name)

    report = ingest(IMAGES, CONFIG, raw, tmp_path / "out", SETTINGS, progress=progress)
    assert accounted(report) and collecting and not any(collecting)
    assert set(pools) == {"system"}
    assert gc.isenabled() and pa.default_memory_pool().backend_name == callers_pool
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(OSError):
        run(raw, tmp_path / "a-file")
    assert gc.isenabled() and pa.default_memory_pool().backend_name == callers_pool
    gc.disable()
    try:
        run(raw, tmp_path / "out")
        assert not gc.isenabled()
    finally:
        gc.enable()


def fork_servers_of_this_process() -> list[int]:
    """The pids of this process's children that run multiprocessing's fork server."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"forkserver" in command:
            found.append(int(entry))
    return found


def test_a_large_corpus_stops_the_decoders_before_the_split_and_the_next_ingest_starts_them(tmp_path):
    """The idle fork server's imports would sit beside the split's memory; from
    `stop_decoders_from_files` on, it is stopped once decoding is done (here from 0 files)."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_pngs(raw, 12, seed=6)
    stopping = IngestSettings(workers=1, heldout_percent=30, batch_files=8, stop_decoders_from_files=0)
    first = ingest(IMAGES, CONFIG, raw, out, stopping, progress=lambda message: None)
    assert first.decoded_files == 12 and fork_servers_of_this_process() == []

    Image.fromarray(np.full((12, 12), 9, np.uint8)).save(raw / "class-0" / "added.png")
    kept = ingest(IMAGES, CONFIG, raw, out, SETTINGS, progress=lambda message: None)  # 13 files, below 20,000
    assert kept.decoded_files == 1 and kept.counts["ingested"] == 13 and accounted(kept)
    assert len(fork_servers_of_this_process()) == 1
    assert kept.version == fresh_version(raw, tmp_path / "fresh")
