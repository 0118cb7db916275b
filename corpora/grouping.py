"""The held-out split by work: files that hold the same tune, scene or picture stay on one side.

Each accepted file brings small signatures (corpora.ingest.DecodedFile): identity keys per
row (a MIDI window up to transposition), thumbnails per row (a picture, a video clip), and
keys of the whole file (a tune's interval n-grams). Files are linked when a row of one equals
or nearly equals a row of the other, or when they share enough whole-file keys; the connected
components are the groups. Groups are then dealt to held-out by a stable hash order until the
held-out share is reached, within each top-level folder (stratum), so every class folder or
kind of footage is represented. A stratum of a time-splittable modality with too few groups
(a handful of long videos) is split by time inside each file instead: the last part held out,
one row length of frames left out between the sides.

The leakage the split leaves is measured on the rows themselves: the share of held-out rows
that equal (keys) or nearly equal (thumbnails) some training row.
"""
from __future__ import annotations

import hashlib
import itertools
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from common.hashing import sha256_json

TRAIN, HELDOUT, GAP = "train", "heldout", "gap"
# Thumbnails (the near_tables' signatures) are flat uint8 grey squares of this side, one per
# picture or per sampled frame, concatenated.
THUMBNAIL_SIDE = 16
GROUP_BY_CHOICES = ("work", "file")
NEAR_CHUNK_ROWS = 1024  # query rows, and pool rows, per distance block: 1024 x 1024 floats at most
MAX_KEY_FILES = 64  # a work key in more files than this is a commonplace (a scale run), not a tune
# Bump when the rule that links two files changes: groups kept from a version made under another
# rule are not reused (see LastGroups, rule_key).
GROUPING_VERSION = 1


@dataclass(frozen=True)
class SplitSettings:
    heldout_percent: int = 10
    group_by: str = "work"  # "file": every file its own group (what a plain hash split does)
    time_split_below_groups: int = 5  # a time-splittable stratum with fewer groups is split by time
    # a stratum split by groups holds out at least this many of them (one fewer than it has, at
    # most), even where they exceed heldout_percent: one held-out scene is one sample, not a test
    min_heldout_groups: int = 1
    leakage_sample: int = 4096  # held-out rows checked for near-identical training rows, per table
    seed: int = 0

    def __post_init__(self):
        if self.group_by not in GROUP_BY_CHOICES:
            raise ValueError(f"group_by must be one of {GROUP_BY_CHOICES}, not {self.group_by!r}")
        if not 0 <= self.heldout_percent <= 100:
            raise ValueError(f"heldout_percent must lie in 0..100, not {self.heldout_percent}")
        if self.min_heldout_groups < 0:
            raise ValueError(f"min_heldout_groups must not be negative, not {self.min_heldout_groups}")


@dataclass
class FileSignatures:
    """What the split keeps of the accepted files, never their decoded content, column by column
    (a few arrays, not objects per file): each file's path and hash, and each table's row
    signatures stacked, with the index of the file every row came from."""

    relpaths: Sequence[str]
    sha256s: Sequence[str]
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # table -> (signatures, owners)
    work_keys: tuple[np.ndarray, np.ndarray] | None = None  # (keys, owners)
    time_spans: dict[int, np.ndarray] = field(default_factory=dict)  # file index -> (rows, 2), where a file has them

    def __len__(self) -> int:
        return len(self.sha256s)

    def rows_of(self, table: str) -> tuple[np.ndarray, np.ndarray]:
        """Every row signature of `table` stacked, and the index of the file each came from."""
        return self.rows.get(table, (np.empty(0), np.empty(0, dtype=np.int64)))


@dataclass
class LastGroups:
    """The groups of the version before, for the files a change keeps. A group none of whose
    files went is still one group: its links are between files that are all still here, and a
    link between two files depends on those two alone (and on how many files hold a work key,
    which `find_groups` checks). So only the links of added files, and of the files left in a
    group that lost one, are searched again."""

    group: np.ndarray  # per file: its group's number in the version before; -1 for a file added since
    removed_groups: np.ndarray  # the numbers of the groups that lost a file
    removed_work_keys: tuple[np.ndarray, np.ndarray] | None = None  # (keys, owners) of the files that went


@dataclass
class SplitPlan:
    group: list[str]  # per file
    stratum: list[str]
    file_split: list[str]  # TRAIN, HELDOUT, or "time" (rows split by time)
    row_splits: dict[int, np.ndarray]  # file index -> split per row of the time table
    summary: dict  # for the manifest: groups, the largest, strata, leakage

    def split_runs(self, index: int, table: str, rows: int, time_table: str | None) -> list[tuple[str, int]]:
        """(split, row count) of a file's consecutive rows that share a split: one run unless the
        file's rows are split by time."""
        if index in self.row_splits and table == time_table:
            return [(split, len(list(run))) for split, run in itertools.groupby(self.row_splits[index].tolist())]
        split = self.file_split[index]
        return [(TRAIN if split == "time" else split, rows)]


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        """`find` of every element at once (pointer jumping: a root is its own parent)."""
        parent = self.parent
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                return parent
            parent = jumped

    def union_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union(x, y)


def stratum_of(relpath: str) -> str:
    """The top-level folder of a file (a class, a kind of footage); "" for files at the top."""
    head, sep, _ = relpath.partition("/")
    return sys.intern(head) if sep else ""  # one string per folder, not one per file


def _stable_order(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


# --- linking files ---------------------------------------------------------------------------


def link_equal_keys(keys: np.ndarray, owners: np.ndarray, union: _UnionFind) -> None:
    files = int(owners.max(initial=0)) + 1
    key_numbers, holders = np.divmod(_repeated_key_rows(keys, owners, files)[0], files)
    same = np.flatnonzero(key_numbers[1:] == key_numbers[:-1])
    union.union_pairs(holders[same], holders[same + 1])


def near_pairs(queries: np.ndarray, pool: np.ndarray, rms: float, same_set: bool,
               query_blocks: np.ndarray | None = None, pool_blocks: np.ndarray | None = None):
    """Yield (query indices, pool indices) of pairs whose RMS difference is at most `rms`.

    Thumbnails are uint8 (N, D). Summing over any partition of the dimensions bounds the
    difference (Cauchy-Schwarz), so two cheaper necessary conditions come first: the pixel sums
    of two matching rows differ by at most rms * D (both sides are sorted by sum, and each
    block of queries meets only that window of the pool), and the sums of their 4x4 pixel
    blocks are within sqrt(16 * D) * rms (one exact integer product per block of pairs).
    Only the pairs that pass are compared in full. With `same_set` (the pool is the queries)
    each pair is found once, and a row never with itself. `query_blocks`, `pool_blocks`: their
    `block_sums`, when the caller has them (a pool that grows by a batch at a time keeps its own).
    """
    if not len(queries) or not len(pool):
        return
    q_blocks = block_sums(queries) if query_blocks is None else query_blocks
    p_blocks = q_blocks if same_set else block_sums(pool) if pool_blocks is None else pool_blocks
    q_sum, p_sum = q_blocks.sum(1, dtype=np.int64), p_blocks.sum(1, dtype=np.int64)
    q_order, p_order = np.argsort(q_sum, kind="stable"), np.argsort(p_sum, kind="stable")
    q_sorted_sum, p_sorted_sum = q_sum[q_order], p_sum[p_order]
    dims = queries.shape[1]
    window = rms * dims * 1.001 + 1  # a hair wide: the confirming comparison rounds in float32
    limit = int(rms * rms * NEAR_BLOCK * NEAR_BLOCK * dims * 1.01) + 16
    # limit - |q - p|^2 = 2 q.p - |p|^2 + (limit - |q|^2) >= 0: one product per block of pairs,
    # the squared norms riding along as two more columns on each side (all exact in int32)
    p_sorted = p_blocks[p_order]
    p_augmented = np.ascontiguousarray(np.concatenate(
        [p_sorted, -(p_sorted * p_sorted).sum(1, keepdims=True), np.ones((len(p_sorted), 1), np.int32)], 1).T)
    for start, end in _query_blocks(q_sorted_sum, window):
        rows = q_order[start:end]
        block = q_blocks[rows]
        q_augmented = np.concatenate([2 * block, np.ones((len(rows), 1), np.int32),
                                      limit - (block * block).sum(1, keepdims=True)], 1)
        low = start + 1 if same_set else int(np.searchsorted(p_sorted_sum, q_sorted_sum[start] - window))
        high = int(np.searchsorted(p_sorted_sum, q_sorted_sum[end - 1] + window, side="right"))
        for first in range(low, high, NEAR_CHUNK_ROWS):  # the pool in blocks too: memory stays flat
            last = min(first + NEAR_CHUNK_ROWS, high)
            # einsum's own loop, not BLAS: no threads to spin against busy decoder processes
            score = np.einsum("ik,kj->ij", q_augmented, p_augmented[:, first:last])
            if score.max() < 0:  # the usual block: no candidate at all, one pass to know it
                continue
            hit_q, hit_p = np.nonzero(score >= 0)
            if same_set:  # a pair once: pool position after the query's own position
                after = first + hit_p > start + hit_q
                hit_q, hit_p = hit_q[after], hit_p[after]
            for part in range(0, len(hit_q), CONFIRM_PAIRS):
                qi = rows[hit_q[part : part + CONFIRM_PAIRS]]
                pi = p_order[first + hit_p[part : part + CONFIRM_PAIRS]]
                difference = queries[qi].astype(np.float32) - pool[pi].astype(np.float32)
                close = np.sqrt((difference * difference).mean(1)) <= rms
                yield qi[close], pi[close]


def _query_blocks(sorted_sums: np.ndarray, window: float):
    """(start, end) blocks of queries sorted by pixel sum, each spanning at most `window` of sum
    (and NEAR_CHUNK_ROWS rows): a block meets a pool window at most three windows wide. Fixed
    blocks would span the whole range when the queries are few and spread (a batch of new
    files against all before it) and meet the whole pool."""
    start = 0
    while start < len(sorted_sums):
        end = int(np.searchsorted(sorted_sums, sorted_sums[start] + window, side="right"))
        end = min(max(end, start + 1), start + NEAR_CHUNK_ROWS)
        yield start, end
        start = end


CONFIRM_PAIRS = 8192  # candidate pairs compared in full at once (float copies: 8 MB each)
NEAR_BLOCK = 4  # side of the pixel blocks whose sums are compared before the pixels


def block_sums(rows: np.ndarray) -> np.ndarray:
    """Sums of the NEAR_BLOCK x NEAR_BLOCK pixel blocks of each thumbnail square (int32, centred
    on 0 so that products stay within int32); in chunks of rows."""
    side = THUMBNAIL_SIDE // NEAR_BLOCK
    parts = [np.empty((0, rows.shape[1] // (NEAR_BLOCK * NEAR_BLOCK)), np.int32)]
    for start in range(0, len(rows), NEAR_CHUNK_ROWS):  # an int32 copy of a chunk of rows at a time
        values = rows[start : start + NEAR_CHUNK_ROWS].astype(np.int32)
        blocks = values.reshape(len(values), -1, side, NEAR_BLOCK, side, NEAR_BLOCK).sum((3, 5))
        parts.append(blocks.reshape(len(values), -1) - 128 * NEAR_BLOCK * NEAR_BLOCK)
    return np.concatenate(parts)


def link_near_rows(thumbs: np.ndarray, owners: np.ndarray, rms: float, union: _UnionFind) -> None:
    for a, b in near_pairs(thumbs, thumbs, rms, same_set=True):
        union.union_pairs(owners[a], owners[b])


@dataclass
class NearPairMemo:
    """Near-identical file pairs found before, per table, and a set of files they were found
    among (every pair of those was compared: the last split's files, or the files an ingest
    compared while decoding, if more). Only the other files are compared again, against all;
    the groups come out exactly as a full comparison makes them."""

    checked: dict[str, set[str]] = field(default_factory=dict)  # table -> sha256 of the files compared
    pairs: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # table -> near (sha256, sha256)
    # table -> the next largest set of files compared among themselves (a resumed run's, when a
    # killed run's is `checked`): if it holds every file outside `checked`, those are not
    # compared among themselves again
    also_checked: dict[str, set[str]] = field(default_factory=dict)


def link_near_rows_incrementally(files: FileSignatures, table: str, thumbs: np.ndarray, owners: np.ndarray,
                                 rms: float, union: _UnionFind, memo: NearPairMemo) -> None:
    sha256s = files.sha256s
    index_of = {sha: i for i, sha in enumerate(sha256s)}
    checked = memo.checked.get(table, set())
    live_pairs = {(a, b) for a, b in memo.pairs.get(table, set()) if a in index_of and b in index_of}
    for a, b in live_pairs:
        union.union(index_of[a], index_of[b])
    del index_of
    # per file: 0 compared (in `checked`), 1 not, but compared among the others of `also_checked`, 2 neither
    also_checked = memo.also_checked.get(table, set())
    kind = np.array([0 if sha in checked else 1 if sha in also_checked else 2 for sha in sha256s], np.int8)[owners]
    old, also, other = (np.flatnonzero(kind == k) for k in range(3))
    rest = np.r_[also, old]
    found = near_owner_pairs(thumbs[other], owners[other], thumbs[rest], owners[rest], rms)
    del rest
    found += near_owner_pairs(thumbs[also], owners[also], thumbs[old], owners[old], rms, among_new=False)
    for a, b in found:
        union.union(a, b)
        live_pairs.add((sha256s[a], sha256s[b]))
    memo.checked[table] = set(sha256s)
    memo.also_checked.pop(table, None)
    memo.pairs[table] = live_pairs


def near_owner_pairs(new: np.ndarray, new_owners: np.ndarray, old: np.ndarray, old_owners: np.ndarray,
                     rms: float, new_blocks: np.ndarray | None = None, old_blocks: np.ndarray | None = None,
                     among_new: bool = True) -> list[tuple[int, int]]:
    """The (owner, owner) pairs of different files that new rows are near: the new rows among
    themselves (each pair once; unless `among_new` is False: compared before), then against the
    old rows (compared among themselves before; `new_blocks`, `old_blocks`: their `block_sums`,
    if the caller has them)."""
    new_blocks = block_sums(new) if new_blocks is None else new_blocks
    found = [(new_owners[qi], new_owners[pi])
             for qi, pi in near_pairs(new, new, rms, same_set=True, query_blocks=new_blocks)] if among_new else []
    found += [(new_owners[qi], old_owners[pi])
              for qi, pi in near_pairs(new, old, rms, same_set=False, query_blocks=new_blocks, pool_blocks=old_blocks)]
    return [(a, b) for query, pool in found for a, b in zip(query.tolist(), pool.tolist()) if a != b]


def link_shared_work(files: FileSignatures, overlap: float, union: _UnionFind, pairs_at_once: int = 1 << 18,
                     searched: np.ndarray | None = None) -> None:
    """Link files that share at least `overlap` of the smaller one's work keys (only the links of
    `searched` files, where given). The pairs of files sharing a key are counted for a range of
    files at a time, `pairs_at_once` or so in each: their number grows faster than the corpus
    (keys shared by more files, as it grows)."""
    if files.work_keys is None:
        return
    keys, owners = _rows_with_keys_of(*files.work_keys, searched)
    key_ranks, owners, sizes = _shared_keys(keys, owners, len(files))
    if searched is not None:  # a file's share is of all its keys, not of those it shares with the searched
        involved = np.zeros(len(files), bool)
        involved[owners] = True
        all_keys, all_owners = files.work_keys
        sizes = _distinct_keys(all_keys[involved[all_owners]], all_owners[involved[all_owners]], len(files))
    if (sizes > 0).sum() < 2:
        return
    partners = _later_holders(key_ranks)
    del key_ranks  # the pairs need only the files, in this order
    pairs_of_file = np.bincount(owners, weights=partners, minlength=len(files)).cumsum()
    cuts = np.searchsorted(pairs_of_file, np.arange(pairs_at_once, pairs_of_file[-1], pairs_at_once), "right")
    for first, stop in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(files)].tolist()):
        a, b, shared = _shared_key_counts(owners, partners, first, stop, len(files))
        linked = shared >= overlap * np.minimum(sizes[a], sizes[b])
        union.union_pairs(a[linked], b[linked])


def _shared_keys(keys: np.ndarray, owners: np.ndarray, files: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key, file) of the keys found more than once, one row per key a file holds, sorted by
    key then file, each key given as its number among those keys; and each file's number of
    distinct keys."""
    rows, repeats = _repeated_key_rows(keys, owners, files)
    sizes = np.bincount(owners, minlength=files) - repeats
    holders = np.remainder(rows, files, out=np.empty(len(rows), np.int32), casting="unsafe")
    return np.floor_divide(rows, files, out=rows), holders, sizes  # in place: the rows become key numbers


def _later_holders(sorted_keys: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """For each row of keys sorted by key (then by file), how many rows after it hold the same
    key: the files it pairs with. 0 for a key held by more than MAX_KEY_FILES files."""
    later = np.empty(len(sorted_keys), np.uint8)
    for first in range(0, len(sorted_keys), chunk):
        part = sorted_keys[first : first + chunk]
        start, end = np.searchsorted(sorted_keys, part, "left"), np.searchsorted(sorted_keys, part, "right")
        after = end - np.arange(first + 1, first + len(part) + 1)
        later[first : first + chunk] = np.where(end - start <= MAX_KEY_FILES, after, 0)
    return later


def _shared_key_counts(owners: np.ndarray, partners: np.ndarray, first: int, stop: int, files: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, keys shared) of every pair of files a < b sharing a key, for a in first..stop-1;
    `owners` are rows sorted by key then file, `partners` their `_later_holders`."""
    rows = np.flatnonzero((owners >= first) & (owners < stop) & (partners > 0))
    codes = []
    for count in np.unique(partners[rows]).tolist():
        these = rows[partners[rows] == count]
        later = owners[these[:, None] + np.arange(1, count + 1)]
        codes.append((owners[these].astype(np.int64)[:, None] * files + later).reshape(-1))
    codes, shared = np.unique(np.concatenate(codes) if codes else np.empty(0, np.int64), return_counts=True)
    return codes // files, codes % files, shared


def _repeated_key_rows(keys: np.ndarray, owners: np.ndarray, files: int, parts: int = 8
                       ) -> tuple[np.ndarray, np.ndarray]:
    """For the keys found more than once (only they can link files; most keys are a single
    file's): one int64 per (key, file holding it), the key's number among those keys times
    `files` plus the file, sorted, each pair once; and per file, how many of its rows repeat a
    pair. The keys are sorted a part at a time (parts by their low bits), each part's numbers
    following the last part's, so the copies are a part's size, not the keys'; each part's
    pairs are made distinct before they are joined."""
    part_of = np.empty(len(keys), np.uint8)
    for start in range(0, len(keys), 1 << 16):
        part_of[start : start + (1 << 16)] = keys[start : start + (1 << 16)] & (parts - 1)
    found, numbered, repeats = [], 0, np.zeros(files, np.int64)
    for part in range(parts):
        members = np.flatnonzero(part_of == part)
        if not len(members):
            continue
        members = members[np.argsort(keys[members])]
        ordered = keys[members]
        key_of_row = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
        repeated = np.bincount(key_of_row) > 1
        kept = repeated[key_of_row]
        number = numbered + np.cumsum(repeated) - 1  # the numbers of this part's repeated keys
        rows = number[key_of_row[kept]] * files + owners[members[kept]]
        rows.sort()
        again = np.zeros(len(rows), bool)  # a (key, file) pair met before: a key repeated within a file
        again[1:] = rows[1:] == rows[:-1]
        repeats += np.bincount(rows[again] % files, minlength=files)
        found.append(rows[~again])
        numbered += int(repeated.sum())
    return (np.concatenate(found) if found else np.empty(0, np.int64)), repeats


def _in_sorted(values: np.ndarray, sorted_set: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """`np.isin(values, sorted_set)` a chunk at a time: isin sorts both together, a few copies
    of `values` at once."""
    found = np.zeros(len(values), dtype=bool)
    if len(sorted_set):
        for start in range(0, len(values), chunk):
            part = values[start : start + chunk]
            place = np.minimum(np.searchsorted(sorted_set, part), len(sorted_set) - 1)
            found[start : start + chunk] = sorted_set[place] == part
    return found


def find_groups(files: FileSignatures, grouping, group_by: str, memo: NearPairMemo | None = None,
                last: LastGroups | None = None) -> list[int]:
    """A root index per file (the smallest index of its group): files with the same root are the
    same work. With a `memo`, near pairs are searched only from files it has not seen (and the
    memo is brought up to date); with `last`, equal keys and shared work only from the files
    `_join_kept_groups` leaves to search."""
    union = _UnionFind(len(files))
    if group_by == "work":
        searched = None  # every file
        if last is not None and not _commonplaces_moved(files, grouping, last):
            searched = _join_kept_groups(last, union)
        for table in grouping.exact_tables:
            keys, owners = _rows_with_keys_of(*files.rows_of(table), searched)
            if len(keys):
                link_equal_keys(keys, owners, union)
        for table in grouping.near_tables:
            thumbs, owners = files.rows_of(table)
            if not len(thumbs):
                continue
            if memo is None:
                link_near_rows(thumbs, owners, grouping.near_rms, union)
            else:
                link_near_rows_incrementally(files, table, thumbs, owners, grouping.near_rms, union, memo)
        if grouping.overlap is not None:
            link_shared_work(files, grouping.overlap, union, searched=searched)
    return union.roots().tolist()


def rule_key(grouping, settings: SplitSettings) -> str:
    """A hash of what decides the groups: a version's groups may be kept by a split under the same key."""
    return sha256_json({"rule": GROUPING_VERSION, "grouping": asdict(grouping), "split": asdict(settings)})


def _join_kept_groups(last: LastGroups, union: _UnionFind) -> np.ndarray:
    """Join the files of every kept group (see LastGroups) under its first file; the files left to
    search from, as a mask: those added, and those of a group that lost a file."""
    searched = (last.group < 0) | np.isin(last.group, last.removed_groups)
    kept = np.flatnonzero(~searched)
    _, first, which = np.unique(last.group[kept], return_index=True, return_inverse=True)
    union.parent[kept] = kept[first][which.reshape(-1)]
    return searched


def _rows_with_keys_of(keys: np.ndarray, owners: np.ndarray, searched: np.ndarray | None,
                       more_keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The rows holding a key that some `searched` file (or `more_keys`) holds; every row when
    `searched` is None. Only they can link a searched file to another."""
    if searched is None or not len(keys):
        return keys, owners
    wanted = keys[searched[owners]]
    if more_keys is not None:
        wanted = np.r_[wanted, more_keys.astype(keys.dtype)]
    rows = _in_small_set(keys, np.unique(wanted))
    return keys[rows], owners[rows]


def _in_small_set(keys: np.ndarray, sorted_set: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """`_in_sorted` for a set of a few keys: each key is first looked up by its low 16 bits in a
    table (one gather), and only the few that pass are searched for (five times faster over
    millions of keys than searching every one)."""
    low = np.zeros(1 << 16, bool)
    low[(sorted_set & 0xFFFF).astype(np.intp)] = True
    found = np.zeros(len(keys), dtype=bool)
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        maybe = np.flatnonzero(low[(part & 0xFFFF).astype(np.intp)])
        found[start + maybe[_in_sorted(part[maybe], sorted_set)]] = True
    return found


def _distinct_keys(keys: np.ndarray, owners: np.ndarray, files: int) -> np.ndarray:
    """How many distinct keys each file holds."""
    return np.bincount(owners, minlength=files) - _repeated_key_rows(keys, owners, files)[1]


def _commonplaces(keys: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """The keys held by more than MAX_KEY_FILES distinct files, sorted."""
    pairs = np.unique(np.stack([keys.astype(np.uint64), owners.astype(np.uint64)], axis=1), axis=0)
    held, count = np.unique(pairs[:, 0], return_counts=True)
    return held[count > MAX_KEY_FILES]


def _commonplaces_moved(files: FileSignatures, grouping, last: LastGroups) -> bool:
    """Whether a work key of an added or removed file crossed MAX_KEY_FILES holders: it then links
    (or no longer links) files whose groups the version before settled, and every link is
    searched again."""
    if grouping.overlap is None or files.work_keys is None:
        return False
    keys, owners = files.work_keys
    added = last.group < 0
    removed_keys, removed_owners = last.removed_work_keys if last.removed_work_keys is not None else (
        np.empty(0, np.uint64), np.empty(0, np.int64))
    keys, owners = _rows_with_keys_of(keys, owners, added, removed_keys)
    kept = ~added[owners]
    now = _commonplaces(keys, owners)
    before = _commonplaces(np.r_[keys[kept], removed_keys.astype(keys.dtype)],
                           np.r_[owners[kept], removed_owners + len(added)])  # removed files numbered after today's
    return not np.array_equal(now, before)


# --- dealing groups to the two sides ---------------------------------------------------------


def _deal_groups(sizes: dict[str, int], percent: int, at_least: int) -> set[str]:
    """Held-out groups of one stratum (its groups' file counts by name): in a stable hash order,
    every group that still fits in `percent` of the stratum's files; then the smallest of the
    others until `at_least` are held out, always leaving one for training."""
    target = sum(sizes.values()) * percent / 100
    order = sorted(sizes, key=_stable_order)
    held, count = set(), 0
    for name in order:
        if count + sizes[name] <= target:
            held.add(name)
            count += sizes[name]
    missing = min(at_least, len(sizes) - 1) - len(held)
    if percent > 0 and missing > 0:
        others = sorted((name for name in order if name not in held), key=lambda name: sizes[name])
        held.update(others[:missing])
    return held


def _first_per_group(group_ids: np.ndarray, values: Sequence[str]) -> list[str]:
    """The smallest of `values` in each group (groups numbered 0..G-1, every one used). Most
    groups are one file: only the others compare text (a sort of every value took longer)."""
    order = np.argsort(group_ids, kind="stable")
    starts = np.searchsorted(group_ids[order], np.arange(len(order) and int(group_ids.max()) + 2))
    firsts = [values[i] for i in order[starts[:-1]].tolist()]
    for group in np.flatnonzero(np.diff(starts) > 1).tolist():
        firsts[group] = min(values[i] for i in order[starts[group] : starts[group + 1]].tolist())
    return firsts


def time_split_rows(spans: np.ndarray, percent: int) -> np.ndarray | None:
    """Split per row of one file by time: the last `percent` of rows held out, every row that
    could share a frame with them (within one row length before the cut) left out as a gap.
    None when the file has too few rows for a train row, a gap and a held-out row."""
    if spans is None or len(spans) < 3:
        return None
    order = np.argsort(spans[:, 0], kind="stable")
    heldout_count = max(1, int(round(len(spans) * percent / 100)))
    cut = spans[order[-heldout_count], 0]
    longest = int((spans[:, 1] - spans[:, 0]).max())
    labels = np.where(spans[:, 0] >= cut, HELDOUT, np.where(spans[:, 1] <= cut - longest, TRAIN, GAP))
    if not (labels == TRAIN).any():
        return None
    return labels.astype(object)


def plan_split(files: FileSignatures, grouping, settings: SplitSettings,
               memo: NearPairMemo | None = None, last: LastGroups | None = None) -> SplitPlan:
    roots = np.asarray(find_groups(files, grouping, settings.group_by, memo, last), np.int64)
    # groups numbered in order of their smallest member: the bookkeeping below is per group and
    # in arrays, not dictionaries of member lists per file
    _, group_id = np.unique(roots, return_inverse=True)
    group_id = group_id.reshape(-1)
    sizes = np.bincount(group_id)
    # a group is named by its smallest member hash: stable while that file stays in the corpus
    names = np.array(["g-" + sha[:16] for sha in _first_per_group(group_id, files.sha256s)] if len(files) else [],
                     dtype=object)
    first_paths = _first_per_group(group_id, files.relpaths) if len(files) else []
    group_strata = np.array([stratum_of(relpath) for relpath in first_paths], dtype=object)
    group = names[group_id].tolist()
    stratum = group_strata[group_id].tolist()

    file_split = np.full(len(files), TRAIN, dtype=object)
    row_splits: dict[int, np.ndarray] = {}
    strata_summary = {}
    for name in sorted(set(group_strata.tolist())):
        ids = np.flatnonzero(group_strata == name)
        in_stratum = np.flatnonzero(group_strata[group_id] == name)
        mode = "group"
        if grouping.time_table and len(ids) < settings.time_split_below_groups:
            by_time = {i: time_split_rows(files.time_spans.get(i), settings.heldout_percent)
                       for i in in_stratum.tolist()}
            if any(labels is not None and (labels == HELDOUT).any() for labels in by_time.values()):
                mode = "time"
                for i, labels in by_time.items():
                    if labels is not None:
                        file_split[i], row_splits[i] = "time", labels
        if mode == "group":
            held = _deal_groups(dict(zip(names[ids].tolist(), sizes[ids].tolist())), settings.heldout_percent,
                                settings.min_heldout_groups)
            held_ids = ids[np.fromiter((n in held for n in names[ids].tolist()), bool, len(ids))]
            file_split[in_stratum[np.isin(group_id[in_stratum], held_ids)]] = HELDOUT
        strata_summary[name or "."] = {
            "files": len(in_stratum), "groups": len(ids), "split": mode,
            "heldout_files": int((file_split[in_stratum] == HELDOUT).sum()),
            "time_split_files": int((file_split[in_stratum] == "time").sum()),
        }

    file_split = file_split.tolist()
    _ensure_both_sides(files, group, file_split, row_splits, settings.heldout_percent)
    largest = None
    if len(files):  # the largest group, the greatest name among equals
        biggest = np.flatnonzero(sizes == sizes.max())
        largest = int(biggest[np.argmax(names[biggest])]) if len(biggest) > 1 else int(biggest[0])
    summary = {
        "group_by": settings.group_by,
        "groups": len(names),
        "largest_group": {"name": names[largest], "files": int(sizes[largest]), "example": first_paths[largest]}
        if largest is not None else None,
        "strata": strata_summary,
        "time_split": any(s["split"] == "time" for s in strata_summary.values()),
    }
    plan = SplitPlan(group, stratum, file_split, row_splits, summary)
    summary["leakage"] = measure_leakage(files, plan, grouping, settings)
    return plan


def _ensure_both_sides(files, group, file_split, row_splits, percent: int) -> None:
    """When the corpus has two groups or more, neither side may be empty (a stratum of one
    group each everywhere would otherwise leave nothing held out)."""
    if len(set(group)) < 2 or percent <= 0:
        return
    has_heldout = HELDOUT in file_split or any((labels == HELDOUT).any() for labels in row_splits.values())
    if has_heldout:
        return
    sizes: dict[str, int] = {}
    for g in group:
        sizes[g] = sizes.get(g, 0) + 1
    chosen = min(sorted(sizes, key=_stable_order), key=lambda g: sizes[g])
    for i, g in enumerate(group):
        if g == chosen:
            file_split[i] = HELDOUT
            row_splits.pop(i, None)


# --- what the split leaves -------------------------------------------------------------------


TRAIN_CODE, HELDOUT_CODE, GAP_CODE = 0, 1, 2  # a row's split as one byte (row_split_codes)


def _split_codes(labels: np.ndarray) -> np.ndarray:
    """TRAIN, HELDOUT, GAP labels as their codes."""
    return np.where(labels == TRAIN, TRAIN_CODE, np.where(labels == HELDOUT, HELDOUT_CODE, GAP_CODE)).astype(np.int8)


def row_split_codes(owners: np.ndarray, plan: SplitPlan, table: str, time_table: str | None) -> np.ndarray:
    """The split of every row of `table` (its rows in file order, `owners` their files) as a
    code of `_split_codes`: a byte a row, where labels were a pointer a row."""
    file_split = np.array([TRAIN if split == "time" else split for split in plan.file_split], dtype=object)
    codes = _split_codes(file_split)[owners]
    if table == time_table:
        for index, row_labels in plan.row_splits.items():
            codes[owners == index] = _split_codes(row_labels)
    return codes


def measure_leakage(files: FileSignatures, plan: SplitPlan, grouping, settings: SplitSettings) -> dict:
    """Per table: the share of held-out rows that equal (keys) or nearly equal (thumbnails,
    within near_rms) a training row. Thumbnails are checked on a seeded sample of held-out rows."""
    report = {}
    for table in (*grouping.exact_tables, *grouping.near_tables):
        signatures, owners = files.rows_of(table)
        codes = row_split_codes(owners, plan, table, grouping.time_table)
        held = np.flatnonzero(codes == HELDOUT_CODE)
        if table in grouping.exact_tables:
            train = signatures[codes == TRAIN_CODE]
            train.sort()  # in place: _in_sorted needs the order, not distinct values
            leaked = int(_in_sorted(signatures[held], train).sum())
            checked = len(held)
        else:
            rng = np.random.default_rng(settings.seed)
            sample = held
            if len(held) > settings.leakage_sample:
                sample = held[np.sort(rng.choice(len(held), settings.leakage_sample, replace=False))]
            queries, in_pool = sample, codes == TRAIN_CODE
            if settings.group_by == "work":
                # Near rows link their files into one group, and a group lies on one side, unless
                # its files are split by time: only the rows of such groups can leak.
                split_groups = {plan.group[i] for i in plan.row_splits}
                time_split = np.array([g in split_groups for g in plan.group], dtype=bool)
                queries = queries[time_split[owners[queries]]]
                in_pool &= time_split[owners]
            hit = np.zeros(len(queries), dtype=bool)
            for qi, _ in near_pairs(signatures[queries], signatures[in_pool], grouping.near_rms, same_set=False):
                hit[qi] = True
            leaked, checked = int(hit.sum()), len(sample)
        report[table] = {
            "heldout_rows": len(held), "checked": checked, "leaked": leaked,
            "fraction": leaked / checked if checked else 0.0,
            "measure": "equal up to transposition" if table in grouping.exact_tables
            else f"thumbnail RMS <= {grouping.near_rms:g}",
        }
    return report
