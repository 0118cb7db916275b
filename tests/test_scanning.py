"""The scan's remembered hashes: a file is read again exactly when its stat says it may have changed."""
from __future__ import annotations

import gc
import hashlib
import os
import time
import types

import corpora.scanning
from corpora.scanning import RACY_WINDOW_NS, HashMemo, load_hashes, remember_hashes, scan, scan_with_stats


def test_the_scan_reads_again_only_the_files_whose_stat_changed(tmp_path, monkeypatch):
    corpus, hashes_file = tmp_path / "corpus", tmp_path / "hashes.parquet"
    corpus.mkdir()
    for name in ("a.bin", "b.bin", "c.bin"):
        (corpus / name).write_bytes(name.encode() * 100)
    first = scan_with_stats(corpus, load_hashes(hashes_file))
    later = time.time_ns() + 60 * 10**9  # as if the files had settled long before the next scan
    remember_hashes(first, hashes_file, HashMemo(), scan_started_ns=later)
    assert first.fresh == 3
    first = first.files

    edited = corpus / "b.bin"
    kept = edited.stat()
    edited.write_bytes(b"B" * kept.st_size)  # the same size, and the old modification time put back:
    os.utime(edited, ns=(kept.st_atime_ns, kept.st_mtime_ns))  # only the change time shows the edit
    read = []

    def counting_sha256_file(path, *args, **kwargs):
        read.append(os.path.basename(path))
        return real_sha256_file(path, *args, **kwargs)

    real_sha256_file = corpora.scanning.sha256_file
    monkeypatch.setattr(corpora.scanning, "sha256_file", counting_sha256_file)
    second_started = time.time_ns()
    second = scan_with_stats(corpus, load_hashes(hashes_file))

    assert read == ["b.bin"] and second.fresh == 1
    hashes = {f.relpath: f.sha256 for f in second.files}
    assert hashes["b.bin"] == hashlib.sha256(b"B" * kept.st_size).hexdigest() != first[1].sha256
    assert hashes["a.bin"] == first[0].sha256 and hashes["c.bin"] == first[2].sha256

    # remembered at the real time, every file was changed seconds ago: none is trusted next time
    remember_hashes(second, hashes_file, load_hashes(hashes_file), second_started)
    assert len(load_hashes(hashes_file)) == 0
    read.clear()
    scan(corpus, load_hashes(hashes_file))
    assert read == ["a.bin", "b.bin", "c.bin"]


def test_a_file_changed_after_the_scan_began_is_not_remembered(tmp_path):
    """The racy window ends at the scan's start: a long scan may read a file just after a
    write that another write within the same clock tick follows, however long ago that is
    when the hashes are written."""
    corpus, hashes_file = tmp_path / "corpus", tmp_path / "hashes.parquet"
    corpus.mkdir()
    (corpus / "a.bin").write_bytes(b"a" * 10)
    files = scan_with_stats(corpus)
    changed_ns = int(max(files.stats[0, 1], files.stats[0, 2]))
    remember_hashes(files, hashes_file, HashMemo(), scan_started_ns=changed_ns - 1)
    assert len(load_hashes(hashes_file)) == 0
    remember_hashes(files, hashes_file, HashMemo(), scan_started_ns=changed_ns + RACY_WINDOW_NS + 1)
    remembered = load_hashes(hashes_file).table
    assert remembered.column("relpath").to_pylist() == ["a.bin"]
    assert remembered.column("sha256").to_pylist() == [files.files[0].sha256]


def test_a_scan_leaves_no_reference_cycles(tmp_path):
    """The ingest runs with the cyclic collector off, so anything a scan left in a cycle (as a
    recursive closure over its listing did: every file's stat, to the end of the ingest)
    would stay until the process ends. Other tests' threads may leave cycles of their own
    meanwhile, so the check is on what the collector finds of the scan's."""
    corpus = tmp_path / "corpus"
    for folder in ("a", "a/b", "c"):
        (corpus / folder).mkdir(parents=True)
        (corpus / folder / "x.bin").write_bytes(folder.encode())
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds is kept in gc.garbage
    try:
        files = scan(corpus)
        gc.collect()
        relpaths = {f.relpath for f in files}

        def made_by_the_scan(found) -> bool:  # a function of its module, or a list of its listing's tuples
            if isinstance(found, types.FunctionType):
                return found.__code__.co_filename == corpora.scanning.__file__
            return isinstance(found, list) and any(
                isinstance(item, tuple) and item and isinstance(item[0], str) and item[0] in relpaths for item in found)

        from_scan = [found for found in gc.garbage if made_by_the_scan(found)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert [f.relpath for f in files] == ["a/b/x.bin", "a/x.bin", "c/x.bin"]
    assert from_scan == []


def test_the_scan_lists_files_in_order_of_relative_path(tmp_path):
    """Folders are walked one at a time, yet the files come out as their relative paths sort:
    a folder's files sort after a sibling named as its prefix with a dot ("a.txt" < "a/b")
    and before one whose next character sorts above "/"."""
    corpus = tmp_path / "corpus"
    names = ["a.txt", "a/b.bin", "a/c/d.bin", "a-b/e.bin", "a0", "ab/f.bin", "Z/g.bin", "é/h.bin", "a/c.bin"]
    for name in names:
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_bytes(name.encode())
    scanned = scan_with_stats(corpus)
    assert [f.relpath for f in scanned.files] == sorted(names)
    assert scanned.stats[:, 0].tolist() == [len(name.encode()) for name in sorted(names)]
