"""The held-out split by work: copies of one picture, one scene or one tune land on one side,
both sides are filled, long videos are split by time with a gap, and the leakage report can fail."""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import corpora.grouping
from corpora.grouping import (GAP, HELDOUT, MAX_KEY_FILES, TRAIN, FileSignatures, LastGroups, NearPairMemo,
                              SplitSettings, _commonplaces_moved, _UnionFind, block_sums, find_groups,
                              link_shared_work, near_owner_pairs, near_pairs, plan_split, time_split_rows)
from corpora.images import IMAGES, ImageCorpusConfig
from corpora.ingest import IngestSettings, ingest, load_manifest
from corpora.shards import read_shards
from corpora.video import VIDEO, VideoCorpusConfig, write_video

IMAGE_CONFIG = ImageCorpusConfig(resolution=32, channels=1, label_from_path=False)


def distinct_picture(seed: int, side: int = 28) -> np.ndarray:
    """Smooth random blobs: every seed a clearly different picture."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 5)).astype(np.float32)
    return cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def split_by_source(manifest_path: Path, table: str) -> dict[str, set[str]]:
    manifest = load_manifest(manifest_path)
    paths = [manifest_path.parent / shard["path"] for shard in manifest["tables"][table]["shards"]]
    rows = read_shards(paths, columns=["source_path", "split", "group"]).to_pylist()
    splits: dict[str, set[str]] = {}
    for row in rows:
        splits.setdefault(row["source_path"], set()).add(row["split"])
    return splits


def write_pictures_with_copies(folder: Path, originals: int) -> list[tuple[str, str]]:
    """PNG originals, each with a re-encoded JPEG copy and an enlarged JPEG copy; returns (original, copy) pairs."""
    folder.mkdir(parents=True)
    pairs = []
    for index in range(originals):
        pixels = distinct_picture(index)
        Image.fromarray(pixels).save(folder / f"pic-{index:02d}.png")
        (folder / f"pic-{index:02d}-reencoded.jpg").write_bytes(jpeg_bytes(pixels, 60))
        bigger = cv2.resize(pixels, (90, 90), interpolation=cv2.INTER_CUBIC)
        (folder / f"pic-{index:02d}-enlarged.jpg").write_bytes(jpeg_bytes(bigger, 85))
        pairs += [(f"pic-{index:02d}.png", f"pic-{index:02d}-reencoded.jpg"),
                  (f"pic-{index:02d}.png", f"pic-{index:02d}-enlarged.jpg")]
    return pairs


def test_near_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (300, 256)).astype(np.int16)
    planted = np.clip(base[:40] + rng.integers(-5, 6, (40, 256)), 0, 255)
    rows = np.concatenate([base, planted]).astype(np.uint8)
    found = {tuple(sorted(pair)) for a, b in near_pairs(rows, rows, 6.0, same_set=True) for pair in zip(a, b)}
    distance = np.sqrt(((rows[:, None].astype(float) - rows[None].astype(float)) ** 2).mean(-1))
    expected = {(i, j) for i, j in zip(*np.nonzero(np.triu(distance <= 6.0, 1)))}
    assert found == expected and len(expected) == 40


@pytest.mark.parametrize("pairs_at_once", [1 << 19, 5, 1])  # one pass, several, a file at a time
def test_shared_work_links_the_files_brute_force_links(pairs_at_once):
    """Files linked when they share at least 40% of the smaller one's distinct keys, keys
    repeated within a file counted once, keys held by more than MAX_KEY_FILES files not at all."""
    rng, key_space = np.random.default_rng(1), 100  # small enough that many files share keys
    sets = [rng.choice(key_space, rng.integers(0, 12), replace=False) for _ in range(80)]
    sets[5] = np.full(4, 7)  # one key, repeated
    for i in range(10, 10 + MAX_KEY_FILES + 1):  # a commonplace: in too many files to link them
        sets[i] = np.r_[sets[i], key_space]
    keys = np.concatenate([np.r_[s, s[: len(s) // 3]] for s in sets]).astype(np.uint64)  # some repeated within a file
    owners = np.repeat(np.arange(len(sets)), [len(s) + len(s) // 3 for s in sets])
    files = FileSignatures([f"f{i}" for i in range(len(sets))], [f"{i:064x}" for i in range(len(sets))],
                           work_keys=(keys, owners))
    union = _UnionFind(len(sets))
    link_shared_work(files, 0.4, union, pairs_at_once)

    expected = _UnionFind(len(sets))
    holders = {key: {i for i, s in enumerate(sets) if key in set(s.tolist())} for key in range(key_space + 1)}
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            a, b = set(sets[i].tolist()), set(sets[j].tolist())
            shared = sum(1 for key in a & b if len(holders[key]) <= MAX_KEY_FILES)
            if a and b and shared >= 0.4 * min(len(a), len(b)):
                expected.union(i, j)
    assert union.roots().tolist() == expected.roots().tolist()
    assert len(set(union.roots().tolist())) < len(sets)  # it links something


class TuneGrouping:  # what MIDI links files by: equal window keys, and shared work keys
    exact_tables, near_tables, near_rms, overlap, time_table = ("windows",), (), 6.0, 0.4, None


def tune_signatures(pieces: list[dict]) -> FileSignatures:
    def stacked(name):
        return (np.concatenate([piece[name] for piece in pieces]).astype(np.uint64),
                np.repeat(np.arange(len(pieces)), [len(piece[name]) for piece in pieces]))

    return FileSignatures([piece["path"] for piece in pieces], [piece["sha"] for piece in pieces],
                          {"windows": stacked("windows")}, stacked("work"))


def last_groups(before: list[dict], after: list[dict]) -> LastGroups:
    """What an ingest keeps of the split of `before` for the files of `after`."""
    names = plan_split(tune_signatures(before), TuneGrouping, SplitSettings()).group
    number = {sha: sorted(set(names)).index(name) for sha, name in zip((piece["sha"] for piece in before), names)}
    now = {piece["sha"] for piece in after}
    removed = [piece for piece in before if piece["sha"] not in now]
    return LastGroups(np.array([number.get(piece["sha"], -1) for piece in after]),
                      np.array(sorted({number[piece["sha"]] for piece in removed}), dtype=np.int64),
                      tune_signatures(removed).work_keys if removed else None)


def test_groups_kept_from_the_version_before_are_the_groups_a_full_search_finds(monkeypatch):
    """Random changes to a corpus of tunes whose keys are widely shared: the groups found from the
    last version's equal those of a search of every file, whether a work key's holders crossed
    the commonplace bound (every link searched again) or not (only the changed files' links)."""
    monkeypatch.setattr(corpora.grouping, "MAX_KEY_FILES", 6)  # commonplaces a few changes can make or unmake
    rng = np.random.default_rng(3)
    pool = [{"path": f"p{i:03d}.mid", "sha": f"{i:016x}" * 4,  # groups are named by their first 16 digits
             "windows": rng.choice(400, rng.integers(1, 4), replace=False),
             "work": rng.choice(60, rng.integers(1, 6), replace=False)} for i in range(120)]
    kept_path = crossed = 0
    for _ in range(40):
        before = [pool[i] for i in np.sort(rng.choice(len(pool), 90, replace=False))]
        changed = set(rng.choice(len(pool), rng.integers(1, 5), replace=False).tolist())  # added or removed
        after = [piece for i, piece in enumerate(pool) if (piece in before) != (i in changed)]
        last, files = last_groups(before, after), tune_signatures(after)
        moved = _commonplaces_moved(files, TuneGrouping, last)
        kept_path, crossed = kept_path + (not moved), crossed + moved
        assert find_groups(files, TuneGrouping, "work", last=last) == find_groups(files, TuneGrouping, "work")
    assert kept_path >= 10 and crossed >= 5  # both ways were taken


@pytest.mark.parametrize("change", ["add", "remove"])
def test_a_work_key_that_becomes_or_stops_being_a_commonplace_relinks_the_kept_groups(monkeypatch, change):
    monkeypatch.setattr(corpora.grouping, "MAX_KEY_FILES", 6)
    holders = [{"path": f"h{i}.mid", "sha": f"{i:016x}" * 4, "windows": np.array([100 + i]), "work": np.array([50])}
               for i in range(7)]  # each holds only the one key: linked by it while it is no commonplace
    before, after = (holders[:6], holders) if change == "add" else (holders, holders[:6])
    last, files = last_groups(before, after), tune_signatures(after)
    assert len(set(last.group.tolist()) - {-1} | set(last.removed_groups.tolist())) == (1 if change == "add" else 7)
    groups = find_groups(files, TuneGrouping, "work", last=last)
    assert groups == find_groups(files, TuneGrouping, "work")
    assert groups == (list(range(7)) if change == "add" else [0] * 6)


def test_a_group_that_loses_the_file_linking_it_splits_in_two():
    tune = {"windows": np.array([7]), "work": np.array([3, 4])}
    pieces = [{"path": "a.mid", "sha": "a" * 64, "windows": np.array([5]), "work": np.array([1, 2])},
              {"path": "b.mid", "sha": "b" * 64, "windows": np.array([5, 7]), "work": np.array([1, 2])},
              {"path": "c.mid", "sha": "c" * 64, **tune}, {"path": "d.mid", "sha": "d" * 64, **tune}]
    pieces[3]["work"] = np.array([9])  # d is linked to c by its window alone
    after = [pieces[0], pieces[2], pieces[3]]
    last = last_groups(pieces, after)
    assert set(last.group.tolist()) == {0} and last.removed_groups.tolist() == [0]  # a, c, d: one group through b
    assert find_groups(tune_signatures(after), TuneGrouping, "work", last=last) == [0, 1, 1]


def test_a_batch_spread_over_brightness_finds_the_brute_force_pairs_against_kept_block_sums():
    rng = np.random.default_rng(2)  # pixel sums across the whole range: query blocks must split by sum
    base = rng.integers(0, 256, (400, 256)) * rng.uniform(0.05, 1.0, (400, 1))
    base[300:340] = base[rng.choice(300, 40)] + rng.integers(-5, 6, (40, 256))  # the batch copies earlier rows
    rows = np.clip(base, 0, 255).astype(np.uint8)
    old, new = rows[:300], rows[300:]
    found = {tuple(sorted(pair)) for pair in
             near_owner_pairs(new, np.arange(300, 400), old, np.arange(300), 6.0, old_blocks=block_sums(old))}
    distance = np.sqrt(((rows[:, None].astype(float) - rows[None].astype(float)) ** 2).mean(-1))
    expected = {(i, j) for i, j in zip(*np.nonzero(np.triu(distance <= 6.0, 1))) if j >= 300}
    assert found == expected and len(expected) >= 40


def test_incremental_near_search_groups_as_the_exhaustive_one_does():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (300, 256)).astype(np.int16)
    planted = np.clip(base[rng.choice(300, 60)] + rng.integers(-5, 6, (60, 256)), 0, 255)
    rows = np.concatenate([base, planted]).astype(np.uint8)[rng.permutation(360)]
    distance = np.sqrt(((rows[:, None].astype(float) - rows[None].astype(float)) ** 2).mean(-1))
    expected = np.arange(len(rows))  # connected components of the exhaustive near relation
    for _ in range(len(rows)):
        expected = np.where(distance <= 6.0, expected[None, :], len(rows)).min(1)

    def files(count: int) -> FileSignatures:
        shas = [f"{i:064x}" for i in range(count)]
        return FileSignatures([f"{i}.png" for i in range(count)], shas, {"images": (rows[:count], np.arange(count))})

    class Grouping:
        exact_tables, near_tables, near_rms, overlap = (), ("images",), 6.0, None

    memo = NearPairMemo()
    find_groups(files(200), Grouping, "work", memo)  # an earlier corpus: its pairs are remembered
    roots = find_groups(files(360), Grouping, "work", memo)  # only the 160 new files are searched from
    assert np.array_equal(roots, expected) and len(set(expected.tolist())) < 320
    assert memo.checked["images"] == set(files(360).sha256s)


def test_reencoded_and_resized_copies_land_with_their_original(tmp_path):
    pairs = write_pictures_with_copies(tmp_path / "raw", originals=12)
    settings = IngestSettings(workers=1, heldout_percent=30)
    report = ingest(IMAGES, IMAGE_CONFIG, tmp_path / "raw", tmp_path / "shards", settings)
    splits = split_by_source(report.manifest_path, "images")
    grouping = report.manifest["grouping"]
    assert grouping["groups"] == 12 and grouping["largest_group"]["files"] == 3
    for original, copy in pairs:
        assert splits[original] == splits[copy]
    assert {next(iter(s)) for s in splits.values()} == {TRAIN, HELDOUT}
    assert grouping["leakage"]["images"]["leaked"] == 0
    groups = pq.read_table(report.manifest_path.parent / report.manifest["groups"]["path"]).to_pylist()
    assert len({row["group"] for row in groups}) == 12 and len(groups) == 36


def test_leakage_report_fails_when_grouping_is_off(tmp_path):
    write_pictures_with_copies(tmp_path / "raw", originals=12)
    settings = IngestSettings(workers=1, heldout_percent=30, group_by="file")
    report = ingest(IMAGES, IMAGE_CONFIG, tmp_path / "raw", tmp_path / "shards", settings)
    leakage = report.manifest["grouping"]["leakage"]["images"]
    assert report.manifest["grouping"]["groups"] == 36
    assert leakage["leaked"] > 0 and leakage["fraction"] > 0


def test_two_distinct_files_fill_both_sides(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for index in range(2):
        Image.fromarray(distinct_picture(index)).save(raw / f"only-{index}.png")
    report = ingest(IMAGES, IMAGE_CONFIG, raw, tmp_path / "shards", IngestSettings(workers=1))
    assert sorted(next(iter(s)) for s in split_by_source(report.manifest_path, "images").values()) == [HELDOUT, TRAIN]


def moving_bars(frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    video = np.zeros((frames, 64, 64, 3), np.uint8)
    speed, height = rng.integers(1, 4), rng.integers(8, 20)
    colour = rng.integers(80, 256, 3)
    for t in range(frames):
        top = (t * speed) % (64 - height)
        video[t, top : top + height] = colour
        video[t, :, (t * 3) % 64] = 255 - colour
    return video


def test_near_identical_videos_land_in_one_split(tmp_path):
    raw = tmp_path / "raw"
    for index in range(8):
        frames = moving_bars(30, seed=index)
        write_video(raw / f"scene-{index}.mp4", frames, 10.0)
        if index < 4:  # the same scene again, re-encoded at a much lower quality with a little noise
            noisy = np.clip(frames.astype(int) + np.random.default_rng(index).integers(-6, 7, frames.shape), 0, 255)
            write_video(raw / f"scene-{index}-copy.mp4", noisy.astype(np.uint8), 10.0, crf=35)
    config = VideoCorpusConfig(clip_frames=10, clip_hop_frames=10)
    report = ingest(VIDEO, config, raw, tmp_path / "shards", IngestSettings(workers=1, heldout_percent=30))
    splits = split_by_source(report.manifest_path, "clips")
    for index in range(4):
        assert splits[f"scene-{index}.mp4"] == splits[f"scene-{index}-copy.mp4"]
    assert report.manifest["grouping"]["groups"] == 8
    assert report.manifest["grouping"]["leakage"]["clips"]["leaked"] == 0


def test_a_folder_of_few_scenes_holds_out_at_least_the_minimum(tmp_path):
    raw = tmp_path / "raw"
    for index in range(6):
        write_video(raw / f"scene-{index}.mp4", moving_bars(30, seed=index), 10.0)
    write_video(raw / "scene-0-again.mp4", moving_bars(30, seed=0), 10.0, crf=35)  # one scene, two files
    config = VideoCorpusConfig(clip_frames=10, clip_hop_frames=10)

    def heldout_scenes(at_least: int) -> list[str]:
        settings = IngestSettings(workers=1, heldout_percent=10, min_heldout_groups=at_least)
        report = ingest(VIDEO, config, raw, tmp_path / f"shards-{at_least}", settings)
        assert report.manifest["grouping"]["strata"]["."]["split"] == "group"
        splits = split_by_source(report.manifest_path, "clips")
        assert splits["scene-0.mp4"] == splits["scene-0-again.mp4"]
        return sorted(path for path, sides in splits.items() if sides == {HELDOUT} and "again" not in path)

    # a tenth of 7 files is no whole scene: one is held out all the same, then as many as asked,
    # the smaller scenes first and the same ones as before, and one always stays for training
    one, two, all_but_one = heldout_scenes(1), heldout_scenes(2), heldout_scenes(10)
    assert len(one) == 1 and len(two) == 2 and set(one) < set(two)
    assert "scene-0.mp4" not in two
    assert len(all_but_one) == 5 and "scene-0.mp4" not in all_but_one


def test_few_long_videos_are_split_by_time_with_a_gap(tmp_path):
    raw = tmp_path / "raw"
    for index in range(3):
        write_video(raw / f"long-{index}.mp4", moving_bars(160, seed=10 + index), 10.0)
    config = VideoCorpusConfig(clip_frames=10, clip_hop_frames=10)
    report = ingest(VIDEO, config, raw, tmp_path / "shards", IngestSettings(workers=1, heldout_percent=10))
    grouping = report.manifest["grouping"]
    assert grouping["time_split"] and grouping["strata"]["."]["split"] == "time"
    manifest = report.manifest
    paths = [report.manifest_path.parent / s["path"] for s in manifest["tables"]["clips"]["shards"]]
    rows = read_shards(paths, columns=["source_path", "clip_index", "split"]).to_pylist()
    for index in range(3):
        labels = [row["split"] for row in sorted((r for r in rows if r["source_path"] == f"long-{index}.mp4"),
                                                 key=lambda r: r["clip_index"])]
        # 16 clips of 10 frames: the last 2 held out, the one before them a gap, the rest training
        assert labels == [TRAIN] * 13 + [GAP] + [HELDOUT] * 2


def test_time_split_keeps_a_gap_of_one_row_length():
    spans = np.array([(start, start + 20) for start in range(0, 200, 10)])  # overlapping clips, hop 10
    labels = time_split_rows(spans, percent=10)
    cut = spans[labels == HELDOUT][:, 0].min()
    assert spans[labels == TRAIN][:, 1].max() <= cut - 20
    assert (labels == GAP).sum() == 3 and (labels == HELDOUT).sum() == 2
    assert time_split_rows(spans[:2], percent=10) is None


@pytest.mark.parametrize("group_by", ["work", "file"])
def test_grouping_choice_changes_the_data_version(tmp_path, group_by):
    write_pictures_with_copies(tmp_path / "raw", originals=3)
    report = ingest(IMAGES, IMAGE_CONFIG, tmp_path / "raw", tmp_path / "shards",
                    IngestSettings(workers=1, group_by=group_by))
    other = ingest(IMAGES, IMAGE_CONFIG, tmp_path / "raw", tmp_path / "shards2",
                   IngestSettings(workers=1, group_by="file" if group_by == "work" else "work"))
    assert report.version != other.version and report.manifest["split"]["group_by"] == group_by


def write_tune(path: Path, soprano: np.ndarray, lower_seed: int, shift: int = 0) -> None:
    """A four-voice piece in quarter notes: the given soprano line (MIDI pitches) and three
    lower voices drawn from `lower_seed`, so another seed re-harmonises the same tune."""
    import pretty_midi

    rng = np.random.default_rng(lower_seed)
    midi = pretty_midi.PrettyMIDI(initial_tempo=100)
    voices = [soprano + shift] + [soprano + shift - rng.choice([3, 4, 5, 7, 8, 9], len(soprano)) - 12 * v
                                  for v in range(3)]
    for line in voices:
        instrument = pretty_midi.Instrument(program=0)
        for beat, pitch in enumerate(line):
            instrument.notes.append(pretty_midi.Note(80, int(pitch), beat * 0.6, beat * 0.6 + 0.6))
        midi.instruments.append(instrument)
    midi.write(str(path))


def write_tunes(raw: Path, count: int) -> list[np.ndarray]:
    """`count` distinct random-walk tunes as tune-<i>.mid, each harmonised by its own seed."""
    raw.mkdir()
    steps = [np.random.default_rng(seed).choice([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5], 32) for seed in range(count)]
    tunes = [72 + np.cumsum(step) - np.cumsum(step).mean().round().astype(int) for step in steps]
    for index, tune in enumerate(tunes):
        write_tune(raw / f"tune-{index}.mid", tune, lower_seed=index)
    return tunes


def test_a_tune_transposed_and_reharmonised_lands_with_its_original(tmp_path):
    from corpora.midi import MIDI, MidiCorpusConfig

    raw = tmp_path / "raw"
    tunes = write_tunes(raw, 8)
    write_tune(raw / "tune-0-in-another-key.mid", tunes[0], lower_seed=99, shift=5)
    report = ingest(MIDI, MidiCorpusConfig(), raw, tmp_path / "shards", IngestSettings(workers=1, heldout_percent=40))
    groups = {row["source_path"]: row for row in pq.read_table(
        report.manifest_path.parent / report.manifest["groups"]["path"]).to_pylist()}
    assert groups["tune-0.mid"]["group"] == groups["tune-0-in-another-key.mid"]["group"]
    assert groups["tune-0.mid"]["split"] == groups["tune-0-in-another-key.mid"]["split"]
    assert report.manifest["grouping"]["groups"] == 8
    assert {row["split"] for row in groups.values()} == {TRAIN, HELDOUT}
    for table in ("melody_windows", "chorale_windows"):
        assert report.manifest["grouping"]["leakage"][table]["leaked"] == 0


def test_a_one_file_change_keeps_the_groups_it_does_not_touch_and_lands_on_the_fresh_version(tmp_path, monkeypatch):
    from corpora.midi import MIDI, MidiCorpusConfig

    raw = tmp_path / "raw"
    tunes = write_tunes(raw, 6)
    settings = IngestSettings(workers=1, heldout_percent=40)

    def run(out: Path) -> tuple:
        said = []
        report = ingest(MIDI, MidiCorpusConfig(), raw, out, settings, progress=said.append)
        groups = pq.read_table(report.manifest_path.parent / report.manifest["groups"]["path"]).to_pydict()
        kept = any("kept where no file left them" in line for line in said)
        return report.version, dict(zip(groups["source_path"], groups["group"])), kept

    def fresh() -> str:
        return run(tmp_path / f"fresh-{len(list(tmp_path.glob('fresh-*')))}")[0]

    assert run(tmp_path / "out")[2] is False  # nothing before it
    write_tune(raw / "tune-0-in-another-key.mid", tunes[0], lower_seed=99, shift=5)
    version, group_of, kept = run(tmp_path / "out")
    assert kept and version == fresh() and group_of["tune-0-in-another-key.mid"] == group_of["tune-0.mid"]
    (raw / "tune-0.mid").unlink()
    version, group_of, kept = run(tmp_path / "out")
    assert kept and version == fresh() and len(set(group_of.values())) == 6

    monkeypatch.setattr(corpora.grouping, "GROUPING_VERSION", corpora.grouping.GROUPING_VERSION + 1)  # another rule
    (raw / "tune-1.mid").unlink()
    version, _, kept = run(tmp_path / "out")
    assert not kept and version == fresh()
