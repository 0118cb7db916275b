"""Image GAN training throughput (and, with --quality, sample quality). Prints tables.

    .venv/bin/python -m bench.train                      # throughput: pipeline vs plain loop, FLOP/s vs peak
    .venv/bin/python -m bench.train --quality            # + fid_classifier of a demo-profile run
    .venv/bin/python -m bench.train --quality --architecture dcgan --architecture sngan --seed 0 --seed 1
    .venv/bin/python -m bench.train --quality --bundle runs/demo/bundle.pt
    .venv/bin/python -m bench.train --quality --set 'betas=[0.5, 0.999]'   # the demo with config overrides
    .venv/bin/python -m bench.train --quality --profile cpu-long   # the 20-minute budget (any --family)
    .venv/bin/python -m bench.train --family music [--quality]   # see bench/music.py
    .venv/bin/python -m bench.train --family painting [--quality]   # bench/painting.py
    .venv/bin/python -m bench.train --family video [--quality]   # bench/video.py

Throughput rows, interleaved in each repeat so that machine load hits them alike (medians):
- pipeline: ImageGanFamily through models.trainer.fit, fed uint8 images as the corpus stores
  them (converted per batch), with RNG/sampler bookkeeping and logging;
- plain loop: the same networks and losses in a bare PyTorch loop on pre-converted float tensors.
The FLOP count of one step comes from torch.utils.flop_counter.FlopCounterMode; the peak is a
square matmul timed in the same run. On a shared machine, read the load average printed above
the table before reading any number.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.runs import TimedRun, parse_overrides, row_name, timed_fit
from models.bundle import save_bundle
from models.classifier import ClassifierConfig, FeatureClassifier, predict_labels, train_classifier
from models.distances import memorization
from models.family import families
from models.generators import to_unit_range
from models.image_gan.config import ImageGanConfig
from models.image_gan.data import load_image_split
from models.image_gan.metrics import LabelledImages, format_report, gan_report
from models.image_gan.networks import Discriminator, Generator
from models.image_gan.sampling import load_generator, sample
from models.image_gan.training import ImageGanFamily, export_bundle
from models.distributed import Distributed
from models.trainer import autocast_for, bf16_supported, fit, uses_channels_last

MATMUL_SIZE, MATMUL_REPEATS = 1024, 10
QUALITY_SAMPLES = 5000  # images per row of the quality table (FID is biased by n: all rows equal)


def load_images(manifest: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(train images, labels, heldout images, labels, class names) as uint8 (N,32,32,1)."""
    if manifest is not None:
        data = load_image_split(manifest)
        return data.train_images, data.train_labels, data.heldout_images, data.heldout_labels, data.class_names
    from corpora.defaults.images import CLASS_NAMES, read_idx

    def padded(split):  # Fashion-MNIST is 28x28; the GAN wants a power of two
        images, labels = read_idx(split)
        return np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None], labels.astype(np.int64)

    (x, y), (hx, hy) = padded("train"), padded("test")
    return x, y, hx, hy, list(CLASS_NAMES)


def load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# --- throughput ----------------------------------------------------------------------------


def pipeline_images_per_second(config, images, labels, steps, bf16: str, channels_last: str = "auto") -> float:
    family = ImageGanFamily(config, images, labels)
    seen = {}
    with tempfile.TemporaryDirectory() as run_dir:
        fit(family, config.trainer_config(steps=steps, log_every=steps, checkpoint_every=10 * steps, bf16=bf16,
                                          channels_last=channels_last),
            run_dir, log=lambda step, m: seen.update(m))
    return seen["items_per_second"]


def plain_images_per_second(config, real: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    """The same DCGAN step written as a bare loop: no trainer, no uint8 conversion; in the memory
    layout the trainer picks."""
    torch.manual_seed(config.seed)
    layout = torch.channels_last if uses_channels_last(config.trainer_config(), real.device) else torch.contiguous_format
    g, d = Generator(config).to(memory_format=layout), Discriminator(config).to(memory_format=layout)
    real = real.contiguous(memory_format=layout)
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr_g, betas=config.betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr_d, betas=config.betas)
    started = time.perf_counter()
    for _ in range(steps):
        index = torch.randint(len(real), (config.batch_size,))
        x, y = real[index], labels[index]
        fake = g(torch.randn(config.batch_size, config.latent_dim), y)
        d_loss = F.softplus(-d(x, y)).mean() + F.softplus(d(fake.detach(), y)).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = F.softplus(-d(fake, y)).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        d_loss.item(), g_loss.item()
    return steps * config.batch_size / (time.perf_counter() - started)


def flops_per_step(config, images, labels, bf16: bool) -> int:
    family = ImageGanFamily(config, images, labels)
    batch = family.make_batch(next(family.rows.batches(config.batch_size, config.seed, Distributed())), torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter:
        family.train_step(batch, 0, autocast_for(torch.device("cpu"), bf16))
    return counter.get_total_flops()


def matmul_peak_gflops(dtype: torch.dtype) -> float:
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype)
    a @ b  # warm-up: first call picks kernels
    times = []
    for _ in range(MATMUL_REPEATS):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * MATMUL_SIZE**3 / min(times) / 1e9  # best: the peak, not the contended average


def throughput_table(config, images, labels, steps: int, repeats: int) -> str:
    real = to_unit_range(torch.as_tensor(images))  # the plain loop's pre-converted float copy
    label_tensor = torch.as_tensor(labels)
    use_bf16 = bf16_supported(torch.device("cpu"))
    rows = {"pipeline fp32": [], "pipeline fp32, channels_last off": [], "plain loop fp32": []}
    if use_bf16:
        rows["pipeline bf16 autocast"] = []
    pipeline_images_per_second(config, images, labels, 2, "off")  # warm-up
    for _ in range(repeats):
        rows["pipeline fp32"].append(pipeline_images_per_second(config, images, labels, steps, "off"))
        rows["pipeline fp32, channels_last off"].append(
            pipeline_images_per_second(config, images, labels, steps, "off", channels_last="off"))
        rows["plain loop fp32"].append(plain_images_per_second(config, real, label_tensor, steps))
        if use_bf16:
            rows["pipeline bf16 autocast"].append(pipeline_images_per_second(config, images, labels, steps, "on"))
    flops = {"fp32": flops_per_step(config, images, labels, False), "bf16": flops_per_step(config, images, labels, True)}
    peaks = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    lines = [
        f"config: {config.architecture} {config.resolution}x{config.resolution}x{config.channels} widths={config.widths} "
        f"batch={config.batch_size}; {steps} steps x {repeats} repeats; threads={torch.get_num_threads()}; "
        f"load average {load_average()}; cpu bf16 native: {use_bf16}",
        f"matmul peak ({MATMUL_SIZE}^3, best of {MATMUL_REPEATS}): fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s",
        f"FLOPs per step (FlopCounterMode): {flops['fp32'] / 1e9:.3f} GFLOP",
        "",
        "| loop | images/s median | min | max | step GFLOP/s | % of matmul peak |",
        "|---|---|---|---|---|---|",
    ]
    for name, values in rows.items():
        median = statistics.median(values)
        precision = "bf16" if "bf16" in name else "fp32"
        gflops = flops[precision] * median / config.batch_size / 1e9
        lines.append(f"| {name} | {median:.0f} | {min(values):.0f} | {max(values):.0f} | {gflops:.1f} | "
                     f"{100 * gflops / peaks[precision]:.0f}% |")
    return "\n".join(lines)


# --- quality -------------------------------------------------------------------------------


def train_to_bundle(config, images, labels, class_names, run_dir: Path) -> tuple[dict, TimedRun]:
    family = ImageGanFamily(config, images, labels, class_names)

    def log(step, m):
        print(f"  step {step}: " + " ".join(f"{k}={v:.3g}" for k, v in m.items()), flush=True)

    run = timed_fit(family, config.trainer_config(bf16="off"), run_dir, log=log)
    bundle = export_bundle(family, run.result.step)
    save_bundle(bundle, run_dir / "bundle.pt")
    return bundle, run


def quality_table(args, images, labels, heldout, heldout_labels, class_names, num_classes) -> str:
    started = time.perf_counter()
    if args.classifier is not None and args.classifier.exists():  # reuse: it takes minutes on 2 cores
        classifier = FeatureClassifier(images.shape[3], num_classes)
        classifier.load_state_dict(torch.load(args.classifier, weights_only=True))
        accuracy = float((predict_labels(classifier, heldout) == heldout_labels).mean())
    else:
        classifier, accuracy = train_classifier(images, labels, heldout, heldout_labels,
                                                ClassifierConfig(epochs=args.classifier_epochs))
        if args.classifier is not None:
            torch.save(classifier.state_dict(), args.classifier)
    print(f"feature classifier: heldout accuracy {accuracy:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    demo = ImageGanConfig.profile("demo", num_classes=num_classes)
    torch.manual_seed(demo.seed)
    conditioned = np.arange(QUALITY_SAMPLES) % num_classes  # each row's label_accuracy is against these
    samples = {"untrained": sample(Generator(demo).eval(), QUALITY_SAMPLES, seed=1, labels=conditioned)}
    notes = []
    bundles = {f"bundle {i}": load_generator(path) for i, path in enumerate(args.bundle or [])}
    for profile in [] if args.bundle else args.profile or ["demo"]:
        for architecture in args.architecture or [ImageGanConfig.profile(profile).architecture]:
            for seed in args.seed or [demo.seed]:
                config = ImageGanConfig.profile(profile, num_classes=num_classes, architecture=architecture, seed=seed,
                                                **args.overrides)
                run_dir = Path(tempfile.mkdtemp(prefix=f"bench-{profile}-{architecture}-"))
                bundle, run = train_to_bundle(config, images, labels, class_names, run_dir)
                name = row_name(f"{profile} {architecture}", seed, args.overrides)
                bundles[name] = load_generator(bundle)
                notes.append(f"{run.describe(name)} ({run_dir})")
    for name, generator in bundles.items():
        samples[name] = sample(generator, QUALITY_SAMPLES, seed=1, labels=conditioned)
    # a random subset of the held-out images is the floor (shards are stored in class order)
    chosen = np.sort(np.random.default_rng(0).choice(len(heldout), min(QUALITY_SAMPLES, len(heldout)), replace=False))
    report = gan_report(classifier, images, LabelledImages(heldout[chosen], heldout_labels[chosen]),
                        {name: LabelledImages(s, conditioned) for name, s in samples.items()})
    copies = {name: memorization(s[:500], images)["near_copy_count"] for name, s in samples.items()}
    return "\n".join([*notes, format_report(report), f"near copies among 500 samples: {copies}"])


def bench_families() -> list[str]:
    """--family's choices: the first word of each registered family's name ("music" of "music-vae")
    that names a bench module (bench/music.py); the image GAN's bench is this module."""
    words = [record.name.split("-")[0] for record in families().values()]
    return [word for word in words if word == "image" or importlib.util.find_spec(f"bench.{word}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, help="an image corpus manifest.json (default: Fashion-MNIST in memory)")
    parser.add_argument("--steps", type=int, default=20, help="steps per throughput repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--bundle", type=Path, action="append", help="with --quality: evaluate these bundles instead of training the demo")
    parser.add_argument("--architecture", action="append",
                        help="with --quality (images): train each profile with each (default: the profile's)")
    parser.add_argument("--seed", type=int, action="append", help="with --quality: train each profile with each seed")
    parser.add_argument("--profile", action="append",
                        help="with --quality: train these profiles (default: the demo; for paintings both demos)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON",
                        help="with --quality: overrides of the profiles' configs for the trained rows")
    parser.add_argument("--classifier", type=Path, help="with --quality: feature classifier state_dict to load, or to save once trained")
    parser.add_argument("--classifier-epochs", type=int, default=ClassifierConfig.epochs,
                        help="with --quality: epochs of the feature classifier (a small corpus needs more)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--sheets", type=Path, help="with --quality --family painting: each row's samples as a PNG here")
    parser.add_argument("--family", choices=bench_families(), default="image")
    parser.add_argument("--kind", choices=["chorale", "melody"], default="chorale", help="with --family music")
    args = parser.parse_args()
    if args.sheets and args.family != "painting":
        parser.error("--sheets is for --family painting")
    args.overrides = parse_overrides(args.set)
    torch.set_num_threads(args.threads)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; threads={args.threads}", flush=True)

    if args.family != "image":
        bench = importlib.import_module(f"bench.{args.family}")
        options = {"kind": args.kind} if args.family == "music" else {}
        manifest = args.manifest or bench.DEFAULT_MANIFEST
        if not args.skip_throughput:
            print(bench.throughput_table(manifest, args.steps, args.repeats, **options), flush=True)
        if args.quality:
            profiles = args.profile or list(getattr(bench, "DEMO_PROFILES", ["demo"]))
            sheets = {"sheets": args.sheets} if args.sheets else {}
            print(bench.quality_table(manifest, profiles, args.seed or [0], args.overrides, **options, **sheets),
                  flush=True)
        return

    images, labels, heldout, heldout_labels, class_names = load_images(args.manifest)
    num_classes = len(class_names)
    if not args.skip_throughput:
        # DCGAN only: the plain loop below writes out the DCGAN step
        config = ImageGanConfig.profile("demo", num_classes=num_classes,
                                        resolution=images.shape[1], channels=images.shape[3])
        print(throughput_table(config, images, labels, args.steps, args.repeats), flush=True)
    if args.quality:
        print(quality_table(args, images, labels, heldout, heldout_labels, class_names, num_classes), flush=True)


if __name__ == "__main__":
    main()
