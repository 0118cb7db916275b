"""What content credentials cost: signing one gallery's files against building that gallery.

    PYTHONPATH=$PWD .venv/bin/python bench/credentials.py [--data-root /tmp/atelier-credentials] [--repeats 3]

The music gallery: the most files of any family's (4 chorales, 4 melodies and 5 interpolation
steps, each .mid, .wav and two PNGs), at its real, demo size. Set-up, once per data root and not
timed: a tiny chorale corpus and a music VAE trained for a few steps (a smaller model than the
demo profile's makes the gallery cheaper to build, so the share measured here is an upper bound).
Then, `--repeats` times each: materialize `music_gallery` (which signs its files), and sign the
same folder again on its own. Prints medians; the target is under 5% of the build.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assets.ingest import CORPUS_ASSET_OF  # noqa: E402
from assets.music_vae import GALLERY_SEED, music_gallery, music_vae  # noqa: E402
from pipelines.definitions import build_resources  # noqa: E402
from provenance.credentials import Provenance, is_signable, sign_folder  # noqa: E402
from tests.test_music_assets import write_chorales  # noqa: E402

TARGET = 0.05


def prepare(root: Path, instance: dg.DagsterInstance) -> dict:
    resources = build_resources(str(root / "data"))
    resources["mlflow"].initialize()
    if not (root / "raw").exists():
        write_chorales(root / "raw")
    config = {"ops": {"midi_corpus": {"config": {"source_dir": str(root / "raw"), "heldout_percent": 40}},
                      "music_vae": {"config": {"steps": 6, "eval_samples": 8}}}}
    result = dg.materialize([CORPUS_ASSET_OF["midi"], music_vae], resources=resources, run_config=config, instance=instance)
    assert result.success
    return resources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, help="kept between invocations (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = args.data_root or Path(tempfile.mkdtemp(prefix="atelier-credentials-"))
    with dg.DagsterInstance.ephemeral() as instance:
        started = time.perf_counter()
        resources = prepare(root, instance)
        print(f"set-up (corpus, 6-step training): {time.perf_counter() - started:.1f} s, not counted")
        builds, signings = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = dg.materialize([music_vae.to_source_asset(), music_gallery], selection=[music_gallery],
                                    resources=resources, instance=instance)
            builds.append(time.perf_counter() - started)
            assert result.success
            [event] = result.asset_materializations_for_node("music_gallery")
            folder = Path(event.metadata["index"].value).parent
            version = resources["mlflow"].client().get_model_version("music-vae", event.metadata["model_version"].value)
            started = time.perf_counter()
            signed = sign_folder(folder, Provenance.of_model_version(version, [GALLERY_SEED]), resources["storage"].root)
            signings.append(time.perf_counter() - started)
    files = sorted(path.suffix for path in folder.iterdir() if is_signable(path))
    counts = ", ".join(f"{files.count(suffix)} {suffix}" for suffix in sorted(set(files)))
    build, sign = statistics.median(builds), statistics.median(signings)
    share = sign / (build - sign)  # the build's own work, without the signing it now includes
    print(f"\nmusic gallery, {len(signed)} files signed ({counts}); medians of {args.repeats}\n")
    print("| step | median s | all runs s |\n|---|---|---|")
    print(f"| build the gallery (materialize, signing included) | {build:.2f} | {', '.join(f'{b:.2f}' for b in builds)} |")
    print(f"| sign its files | {sign:.3f} | {', '.join(f'{s:.3f}' for s in signings)} |")
    print(f"| signing / build without signing | {share:.1%} | target < {TARGET:.0%}: {'met' if share < TARGET else 'NOT met'} |")


if __name__ == "__main__":
    main()
