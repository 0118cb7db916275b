"""SIGKILL an image ingest while it writes shards: a reader never sees a partial version, and a
rerun finishes with every file ingested exactly once.

The ingest runs in a child process (`tests/reliability/_ingest_child.py`) with one row per
shard, so a few hundred PNGs make a few hundred shard files and the kill lands mid-write.
The whole process group is killed, decoder workers included.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from corpora.images import IMAGES
from corpora.ingest import MANIFEST_NAME, ingest, load_manifest, read_rejections
from corpora.shards import read_shards
from tests.reliability._ingest_child import CONFIG, SETTINGS
from tests.reliability._media import write_pngs

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FIRST_FILES, MORE_FILES = 100, 150


def start_ingest(raw: Path, out: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with open(log, "wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.reliability._ingest_child", str(raw), str(out)],
            cwd=PROJECT_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )


def kill_when(process: subprocess.Popen, ready, timeout_s: float = 90.0) -> bool:
    """SIGKILL the child's whole process group once `ready()` holds; False if it exited first."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.001)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the ingest did not reach the kill point in {timeout_s} s")
    return False


def shard_files(out: Path) -> list[Path]:
    return sorted(out.glob("v-*/images-*.parquet"))


def assert_reader_sees_a_whole_version(out: Path, allowed_versions: set[str | None] | None) -> dict | None:
    """What a reader following manifest.json finds: nothing, or a complete, checksummed version
    (one of `allowed_versions`, when given)."""
    manifest_path = out / MANIFEST_NAME
    if not manifest_path.exists():
        assert allowed_versions is None or None in allowed_versions, "the manifest vanished"
        return None
    manifest = json.loads(manifest_path.read_text())  # whole JSON, never a torn write
    assert allowed_versions is None or manifest["version"] in allowed_versions
    named = [shard for table in manifest["tables"].values() for shard in table["shards"]] + [manifest["rejected"]]
    for entry in named:
        path = out / entry["path"]
        assert not path.name.startswith(".") and not path.name.endswith(".tmp"), entry
        assert path.is_file(), f"the manifest names {entry['path']}, which is gone"
        assert path.stat().st_size == entry["bytes"]
        if "sha256" in entry:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert pq.read_metadata(path).num_rows == entry["rows"]
    rows = read_shards(out / shard["path"] for shard in manifest["tables"]["images"]["shards"])
    assert len(rows) == manifest["counts"]["rows"]["images"] == manifest["counts"]["ingested"]
    assert len(read_rejections(out / manifest["rejected"]["path"])) == manifest["counts"]["rejected"]
    return manifest


def assert_every_file_ingested_once(out: Path, raw: Path, relpaths: list[str]) -> None:
    manifest = load_manifest(out / MANIFEST_NAME)
    counts = manifest["counts"]
    assert (counts["seen"], counts["ingested"], counts["rejected"], counts["duplicates"]) == (len(relpaths), len(relpaths), 0, 0)
    table = read_shards(out / shard["path"] for shard in manifest["tables"]["images"]["shards"])
    assert len(table) == len(relpaths)
    sources = Counter(table.column("source_path").to_pylist())
    assert sources == Counter(relpaths)  # each file exactly once
    digests = table.column("sha256").to_pylist()
    assert len(set(digests)) == len(relpaths)
    assert {hashlib.sha256((raw / p).read_bytes()).hexdigest() for p in relpaths} == set(digests)
    assert not list(out.rglob("*.tmp")), "a killed writer's temporary file survived the rerun"


@pytest.mark.parametrize("scenario", ["fresh-first-shard", "previous-after-some-shards", "previous-random-delay"])
def test_sigkill_while_writing_shards_leaves_a_readable_corpus_and_a_rerun_completes(tmp_path, scenario):
    raw, out = tmp_path / "raw", tmp_path / "data" / "shards" / "images"
    rng = random.Random(f"kill-{scenario}")
    previous = None
    if scenario.startswith("previous"):
        first = write_pngs(raw, FIRST_FILES, seed=1)
        previous = ingest(IMAGES, CONFIG, raw, out, SETTINGS, progress=lambda m: None).manifest
        relpaths = first + [f"late/{p}" for p in write_pngs(raw / "late", MORE_FILES, seed=2)]
    else:
        relpaths = write_pngs(raw, FIRST_FILES + MORE_FILES, seed=3)
    previous_bytes = (out / MANIFEST_NAME).read_bytes() if previous else None
    known = {p.parent.name for p in shard_files(out)}

    def new_shards() -> list[Path]:
        return [p for p in shard_files(out) if p.parent.name not in known]

    if scenario == "fresh-first-shard":
        ready = lambda: bool(new_shards())  # noqa: E731
    elif scenario == "previous-after-some-shards":
        wanted = rng.randrange(5, 150)
        ready = lambda: len(new_shards()) >= wanted  # noqa: E731
    else:
        delay, started = rng.uniform(0.0, 0.4), []

        def ready() -> bool:  # a random moment after the new version folder appears
            if not started and any(d.name not in known for d in out.glob("v-*")):
                started.append(time.monotonic())
            return bool(started) and time.monotonic() - started[0] >= delay

    process = start_ingest(raw, out, tmp_path / "child.log")
    killed = kill_when(process, ready)
    log = (tmp_path / "child.log").read_text(errors="replace")
    mid_write = scenario != "previous-random-delay"  # these kill points lie inside the shard writing
    if mid_write:
        assert killed, f"the ingest finished before the kill point:\n{log}"
        assert shard_files(out) and len(new_shards()) < FIRST_FILES + MORE_FILES

    # what a reader sees right after the kill: the previous version (or none) and, only if the
    # kill came after the commit point, the complete new one; never anything in between
    old_version = previous["version"] if previous else None
    seen = assert_reader_sees_a_whole_version(out, allowed_versions=None)
    seen_version = seen["version"] if seen else None
    if mid_write:
        assert seen_version == old_version
        if previous is not None:
            assert (out / MANIFEST_NAME).read_bytes() == previous_bytes  # untouched, not rewritten
        partial = [d for d in out.glob("v-*") if d.name not in known]
        assert partial, "no partial version folder: the kill came before any write"
    committed = seen_version != old_version

    # the rerun, in this process: finishes and ingests every file exactly once
    report = ingest(IMAGES, CONFIG, raw, out, SETTINGS, progress=lambda m: None)
    assert report.reused == committed
    assert seen_version in {old_version, report.version}
    assert_every_file_ingested_once(out, raw, relpaths)
    assert_reader_sees_a_whole_version(out, {report.version})
    if previous is not None:  # a reader still holding the previous manifest keeps its shards
        assert_previous_still_readable(out, previous)


def assert_previous_still_readable(out: Path, previous: dict) -> None:
    for shard in previous["tables"]["images"]["shards"]:
        path = out / shard["path"]
        assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]


def test_a_killed_run_never_costs_a_reader_the_previous_version(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "data" / "shards" / "images"
    write_pngs(raw, 60, seed=4)
    held = ingest(IMAGES, CONFIG, raw, out, SETTINGS, progress=lambda m: None).manifest  # a reader loads this
    write_pngs(raw / "more", 200, seed=5)
    process = start_ingest(raw, out, tmp_path / "child.log")
    assert kill_when(process, lambda: len(shard_files(out)) > 60 + 3), "the ingest finished before the kill"
    assert load_manifest(out / MANIFEST_NAME)["version"] == held["version"]

    write_pngs(raw / "even-more", 3, seed=6)  # the input changes again before the next run
    current = ingest(IMAGES, CONFIG, raw, out, SETTINGS, progress=lambda m: None).manifest
    assert_previous_still_readable(out, held)
    # exactly two versions stay: the new one and the one a reader may hold; the killed run's
    # half-written folder, which no manifest ever named, is gone
    named = {Path(m["rejected"]["path"]).parts[0] for m in (held, current)}
    assert len(named) == 2 and {d.name for d in out.glob("v-*")} == named
