"""How much of each held-out split is also in training, measured from the shards themselves.

    .venv/bin/python bench/leakage.py [--data-root data] [--sample 4096]

Reads every corpus under <data-root>/shards/, recomputes each row's signature from the stored
content (MIDI windows up to transposition, picture and clip thumbnails), and counts the
held-out rows that equal or nearly equal a training row, by the `split` column as it was
written. It trusts nothing the ingest reported, so it also measures shards written before the
split was grouped (an older data root) for a before/after table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpora import images, midi, video  # noqa: E402
from corpora.grouping import HELDOUT, TRAIN, near_pairs  # noqa: E402
from corpora.ingest import load_manifest, shard_paths  # noqa: E402
from corpora.shards import read_shards, tensors_from_table  # noqa: E402

# corpus folder -> (table, tensor column, signature of a batch of rows, near-identical RMS or None for equal keys)
MEASURES = {
    "images": [("images", "pixels", lambda rows: np.stack([images.thumbnail(r) for r in rows]), images.NEAR_IDENTICAL_RMS)],
    "painting": [("images", "pixels", lambda rows: np.stack([images.thumbnail(r) for r in rows]), images.NEAR_IDENTICAL_RMS)],
    "midi": [("melody_windows", "tokens", midi.transposition_free_keys, None),
             ("chorale_windows", "voices", midi.transposition_free_keys, None)],
    "video": [("clips", "frames", video.clip_signatures, video.NEAR_IDENTICAL_RMS)],
}
BATCH_ROWS = 4096  # rows decoded to signatures at once, to bound memory


def signatures_and_splits(manifest_path: Path, table: str, column: str, signature) -> tuple[np.ndarray, np.ndarray]:
    parts, splits = [], []
    for path in shard_paths(manifest_path, table):
        shard = read_shards([path], columns=[column, "split"])
        for start in range(0, len(shard), BATCH_ROWS):
            rows = shard.slice(start, BATCH_ROWS)
            parts.append(signature(tensors_from_table(rows, column)))
            splits.append(np.asarray(rows.column("split").to_pylist(), dtype=object))
    if not parts:
        return np.empty(0), np.empty(0, dtype=object)
    return np.concatenate(parts), np.concatenate(splits)


def leaked(signatures: np.ndarray, splits: np.ndarray, rms: float | None, sample: int) -> tuple[int, int, int]:
    """(held-out rows, rows checked, rows equal or near-identical to a training row)."""
    heldout, train = signatures[splits == HELDOUT], signatures[splits == TRAIN]
    total = len(heldout)
    if rms is None:
        return total, total, int(np.isin(heldout, train).sum())
    if len(heldout) > sample:
        heldout = heldout[np.sort(np.random.default_rng(0).choice(len(heldout), sample, replace=False))]
    hit = np.zeros(len(heldout), dtype=bool)
    for query, _ in near_pairs(heldout, train, rms, same_set=False):
        hit[query] = True
    return total, len(heldout), int(hit.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--sample", type=int, default=4096, help="held-out rows checked per table for near copies")
    args = parser.parse_args()
    print("| corpus | table | split by | held-out rows | checked | also in training | share | measure |")
    print("|---|---|---|---|---|---|---|---|")
    for corpus, measures in MEASURES.items():
        manifest_path = args.data_root / "shards" / corpus / "manifest.json"
        manifest = load_manifest(manifest_path)
        if manifest is None:
            continue
        split_by = manifest.get("split", {}).get("group_by", "file hash")
        for table, column, signature, rms in measures:
            signatures, splits = signatures_and_splits(manifest_path, table, column, signature)
            total, checked, hits = leaked(signatures, splits, rms, args.sample)
            measure = "equal up to transposition" if rms is None else f"thumbnail RMS <= {rms:g}"
            share = hits / checked if checked else 0.0
            print(f"| {corpus} | {table} | {split_by} | {total} | {checked} | {hits} | {share:.4f} | {measure} |")


if __name__ == "__main__":
    main()
