"""Finding a corpus's files and their content hashes, as real folders have them.

Nested folders, upper-case extensions and names that are not UTF-8 are ordinary. A symbolic
link to a file is followed when it stays inside the corpus folder (its file counts as a
duplicate of the target) and refused when it leads outside it or nowhere; a link to a folder
inside the corpus is not walked, since that folder is listed under its own name. A file that
cannot be read, or vanishes while it is hashed, is reported with its reason rather than
stopping the scan: the ingest rejects it and counts it. Folders are listed one at a time, in an
order that gives the files sorted by relative path without listing the whole corpus first.

Hashing every file is the one cost an unchanged corpus still pays, so the hashes of the last
scan are remembered by (size, modification time, change time, inode): a file whose four are
unchanged is not read again. Any write changes the change time, which no tool can set back, so
only a file written twice within one tick of the file system's clock escapes; the hashes of
files changed after a scan began, or in the seconds before, are therefore not remembered.
"""
from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Callable, Iterator
from itertools import repeat
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.atomic import atomic_write
from common.hashing import sha256_file, sha256_json
from corpora.shards import arrow_table, integer_values, read_parquet

STAT_COLUMNS = ("size", "mtime_ns", "ctime_ns", "inode")
HASHES_SCHEMA = pa.schema([("relpath", pa.string()), *((name, pa.int64()) for name in STAT_COLUMNS),
                           ("sha256", pa.string())])


class SourceFile(NamedTuple):  # a tuple: built once per file of the corpus on every scan, ~4x cheaper than a dataclass
    root: str  # the corpus folder as given (one string that every file shares)
    relpath: str  # inside the corpus, `displayable`: what shards, manifest and rejections record
    size: int
    sha256: str  # "" when the file could not be hashed (see `problem`)
    problem: tuple[str, str, str] | None = None  # (stage, error type, message) of a file refused while scanning
    odd_path: str | None = None  # the real path, where `relpath` does not spell it (a name that is not UTF-8)

    @property
    def path(self) -> str:
        """The real path, to open the file by: built when asked, not held for every file."""
        return real_path(self.root, self.relpath, self.odd_path)


def real_path(root: str, relpath: str, odd_path: str | None) -> str:
    return odd_path or f"{root}{os.sep}{relpath}"


class Scan(NamedTuple):
    files: list[SourceFile]  # sorted by relative path
    # (files, 4) int64: each file's size, mtime_ns, ctime_ns and inode (zeros where it has none),
    # as columns: as three int objects per file they cost about 140 bytes a file to the ingest's end
    stats: np.ndarray
    fresh: int  # files whose content hash is new to the memo (new or changed files: the likely decodes)


def displayable(text: str) -> str:
    """`text` as a valid string: a file name that is not UTF-8 reaches Python with surrogate
    escapes, which Parquet and JSON cannot store, so its stray bytes are spelled `\\xe9`."""
    if text.isascii():  # most names, and nothing to spell
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name makes (only a message could hold one)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _listing(raw_dir: Path) -> Iterator[tuple[str, str, tuple[int, int, int, int] | None,
                                              tuple[str, str, str] | None]]:
    """(relative path, path, (size, mtime_ns, ctime_ns, inode) or None, problem or None) of every
    non-hidden file under `raw_dir`, in order of relative path: one folder listed at a time,
    never the whole corpus at once."""
    root = os.path.realpath(raw_dir)
    # The entries of the folders being walked, innermost last; a stack, not recursion, for trees
    # of any depth. A loop over each folder's entries, not a generator per folder: it runs per file.
    walking = [iter(_sorted_entries(str(raw_dir), ""))] if Path(raw_dir).is_dir() else []
    while walking:
        for relpath, entry in walking[-1]:
            if isinstance(entry, tuple):  # a folder that cannot be listed
                folder, problem = entry
                yield relpath, folder, None, problem
            elif entry.is_symlink() and (problem := _link_problem(entry, root)) is not None:
                yield relpath, entry.path, None, ("scan", *problem)
            elif entry.is_dir(follow_symlinks=False):
                walking.append(iter(_sorted_entries(entry.path, f"{relpath}/")))
                break  # into the folder; its parent's entries go on where they stopped
            elif entry.is_file():
                try:
                    stat = entry.stat()
                except OSError as exc:
                    yield relpath, entry.path, None, (
                        "scan", type(exc).__name__, f"the file cannot be read: {exc.strerror or exc}")
                    continue
                yield relpath, entry.path, (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino), None
        else:
            walking.pop()


def _sorted_entries(folder: str, prefix: str) -> list[tuple[str, os.DirEntry | tuple[str, tuple[str, str, str]]]]:
    """(relative path, entry) of a folder's non-hidden entries, sorted so that walking them
    depth first gives every file in order of relative path: a folder sorts as its name with
    the "/" its files' paths carry (git orders its trees the same way)."""
    try:
        with os.scandir(folder) as listing:
            entries = [entry for entry in listing if not entry.name.startswith(".")]
    except OSError as exc:
        return [(displayable(prefix or "."), (folder, ("scan", type(exc).__name__,
                                                       f"the folder cannot be listed: {exc.strerror or exc}")))]
    named = [(displayable(f"{prefix}{entry.name}"), entry) for entry in entries]
    named.sort(key=lambda item: f"{item[0]}/" if item[1].is_dir(follow_symlinks=False) else item[0])
    return named


def _link_problem(entry: os.DirEntry, root: str) -> tuple[str, str] | None:
    """(error type, message) when `entry`, a symbolic link, is one the corpus cannot follow."""
    target = os.path.realpath(entry.path)
    if not _inside(target, root):
        return "SymlinkOutsideCorpus", f"a symbolic link to {displayable(target)}, outside the corpus folder"
    if not os.path.exists(target):
        return "BrokenSymlink", "a symbolic link to a file that does not exist"
    return None


def _read(path: str) -> tuple[str, tuple[str, str, str] | None]:
    """(content hash, None) of the file at `path`, or ("", the reason it could not be read)."""
    try:
        return sha256_file(path), None
    except FileNotFoundError:
        return "", ("read", "FileVanished", "the file disappeared while the corpus was scanned")
    except OSError as exc:
        return "", ("read", type(exc).__name__, f"the file cannot be read: {exc.strerror or exc}")


class HashMemo:
    """The last scan's hashes, kept as the Arrow table they are stored as (HASHES_SCHEMA): a few
    buffers rather than objects per file, which cost about 700 bytes a file as a dict of tuples.
    (No `pyarrow.compute` here: every decoder process imports this module, and it costs each 10 MB.)"""

    def __init__(self, table: pa.Table | None = None):
        # built from buffers: `Schema.empty_table` imports pandas (half a second)
        self.table = arrow_table([[]] * len(HASHES_SCHEMA), HASHES_SCHEMA) if table is None else table

    def __len__(self) -> int:
        return self.table.num_rows

    def rows_of(self, relpaths: list[str]) -> np.ndarray:
        """Each path's row in the memo, -1 where it has none."""
        row_of = dict(zip(self.table.column("relpath").to_pylist(), range(self.table.num_rows)))
        return np.fromiter(map(row_of.get, relpaths, repeat(-1)), np.int64, len(relpaths))

    def unchanged(self, rows: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """Whether each file (its row of `rows_of`) has the size and times the memo holds."""
        same = rows >= 0
        if same.any():
            remembered = np.stack([integer_values(self.table.column(name)) for name in STAT_COLUMNS], axis=1)
            same[same] = (remembered[rows[same]] == stats[same]).all(axis=1)
        return same

    def sha256s(self) -> list[str]:
        """Every remembered hash, by row."""
        return self.table.column("sha256").to_pylist()


def load_hashes(hashes_file: Path) -> HashMemo:
    """The last scan's hashes (an empty memo when there are none)."""
    return HashMemo(read_parquet(hashes_file)) if hashes_file.is_file() else HashMemo()


def scan_with_stats(raw_dir: Path, known: HashMemo | None = None, keep: Callable[[str], bool] | None = None
                    ) -> Scan:
    """Every non-hidden file under `raw_dir` (whose relative path `keep` accepts), sorted by
    relative path, with its content hash (taken from `known`, see `load_hashes`, for files
    whose size and times are unchanged), and the stats `remember_hashes` keeps."""
    root = str(raw_dir)
    relpaths, stats, odd_paths, problems = [], array("q"), {}, {}  # columns as they come, not a tuple per file
    for relpath, path, stat, problem in _listing(raw_dir):
        if keep is not None and not keep(relpath):
            continue
        # an ASCII path is spelled as it is (see `displayable`): only other paths are compared
        if (problem is not None or not relpath.isascii()) and path != f"{root}{os.sep}{relpath}":
            odd_paths[len(relpaths)] = path
        if problem is not None:
            problems[len(relpaths)] = problem
        stats.extend(stat or (0, 0, 0, 0))
        relpaths.append(relpath)
    stat_rows = np.frombuffer(stats, np.int64).reshape(-1, 4)
    known = known or HashMemo()
    rows = known.rows_of(relpaths)
    unchanged = known.unchanged(rows, stat_rows)
    remembered = known.sha256s()
    files, fresh = [], 0
    for index, (relpath, size, row, same) in enumerate(zip(relpaths, stat_rows[:, 0].tolist(), rows.tolist(),
                                                          unchanged.tolist())):
        # most corpora have neither odd paths nor problems: no lookup per file then
        odd_path = odd_paths.get(index) if odd_paths else None
        if problems and index in problems:
            files.append(SourceFile(root, relpath, 0, "", problems[index], odd_path))
        elif same:
            files.append(SourceFile(root, relpath, size, remembered[row], None, odd_path))
        else:  # one tuple per file, built once its hash is read (a scan builds 176,000 on a large corpus)
            sha256, problem = _read(real_path(root, relpath, odd_path))
            files.append(SourceFile(root, relpath, size, sha256, problem, odd_path))
            fresh += bool(sha256) and (row < 0 or sha256 != remembered[row])
    return Scan(files, stat_rows, fresh)


def scan(raw_dir: Path, known: HashMemo | None = None, keep: Callable[[str], bool] | None = None
         ) -> list[SourceFile]:
    """The files of `scan_with_stats`, for callers that remember no hashes."""
    return scan_with_stats(raw_dir, known, keep).files


# A file changed this close to when it was read may change again within the same tick of the
# file system's clock (coarse on many) with the same size, and its stat would not show it: its
# hash is not remembered, so the next scan reads it again (git's "racily clean" entries). The
# window ends at the scan's start, not its end: a long scan reads files long after it began.
RACY_WINDOW_NS = 2_000_000_000


def remember_hashes(scanned: Scan, hashes_file: Path, known: HashMemo, scan_started_ns: int) -> None:
    """Write this scan's hashes for the next one (but those of files changed after
    `scan_started_ns` or in the RACY_WINDOW_NS before it), unless `known` holds them already."""
    files, stats = scanned.files, scanned.stats
    settled_before = scan_started_ns - RACY_WINDOW_NS
    hashed = np.fromiter((bool(f.sha256) for f in files), bool, len(files))
    rows = np.flatnonzero(hashed & (stats[:, 1] < settled_before) & (stats[:, 2] < settled_before)).tolist()
    table = arrow_table([[files[i].relpath for i in rows], *stats[rows].T, [files[i].sha256 for i in rows]],
                        HASHES_SCHEMA)
    if not table.equals(known.table):
        # no dictionary encoding: every path and hash is distinct, and building the dictionaries
        # of 176,000 of them held about 70 MB more than the table itself
        atomic_write(hashes_file, lambda file: pq.write_table(table, file, compression="zstd", use_dictionary=False))


def part_of(relpath: str, parts: int) -> int:
    """Which of `parts` stable buckets a file belongs to, by its path (the same on every machine)."""
    return int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big") % parts


def folder_signature(raw_dir: Path) -> str:
    """A cheap hash of names, sizes and modification times: when it is unchanged, so is the
    content (barring clock tricks); when it changes, `folder_fingerprint` says whether the
    content did. It reads no file."""
    return sha256_json([(relpath, stat[0] if stat else None, stat[1] if stat else None)
                        for relpath, _, stat, _ in _listing(raw_dir)])


def folder_fingerprint(raw_dir: Path, known: HashMemo | None = None) -> str:
    """A hash of every file's relative path and content: touching a file does not change it.
    Hashes in `known` (the last ingest's, see `load_hashes`) stand for files it saw unchanged."""
    return sha256_json([(f.relpath, f.sha256) for f in scan(raw_dir, known)])
