"""The image GAN family, the shared trainer and the metrics, on tiny data (seconds each)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corpora.images import IMAGES, ImageCorpusConfig
from corpora.ingest import IngestSettings, ingest, shard_paths
from corpora.shards import read_shards, tensors_from_table
from models import metrics
from models.image_gan import (
    ImageGanConfig, ImageGanFamily, export_bundle, interpolate, load_generator, sample, save_bundle,
)
from models.trainer import (
    IndexSampler, fit, latest_checkpoint, list_checkpoints, load_checkpoint, restore_rng_state,
    rng_state, seed_everything,
)
from tests.fresh_process import run_in_fresh_process

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESOLUTION, CLASSES = 16, 3
TINY = dict(resolution=RESOLUTION, widths=(16, 8), latent_dim=8, embed_dim=4, num_classes=CLASSES, batch_size=8)

torch.set_num_threads(1)  # shared CPUs; and bit-exact comparisons need a fixed thread count


def tiny_data(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent patterns (a bar whose position is the class) plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    images = rng.integers(0, 40, size=(n, RESOLUTION, RESOLUTION, 1), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, :, 2 + 5 * label : 5 + 5 * label] = 220
    return images, labels


def tiny_config(**overrides) -> ImageGanConfig:
    return ImageGanConfig.profile("demo", **{**TINY, **overrides})


def parameters_of(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("architecture", ["dcgan", "wgan-gp"])
def test_a_few_steps_give_finite_losses_and_change_every_network(tmp_path, architecture):
    images, labels = tiny_data()
    config = tiny_config(architecture=architecture, n_critic=2 if architecture == "wgan-gp" else 1)
    family = ImageGanFamily(config, images, labels)
    before = {name: parameters_of(m) for name, m in family.modules().items()}
    logged = []
    result = fit(family, config.trainer_config(steps=6, log_every=2, checkpoint_every=3), tmp_path,
                 log=lambda step, m: logged.append((step, m)))
    assert result.finished and result.step == 6
    assert [step for step, _ in logged] == [2, 4, 6]
    for _, m in logged:
        assert "d_loss" in m and "g_loss" in m and m["items_per_second"] > 0
        assert all(np.isfinite(v) for v in m.values())
    for name, module in family.modules().items():
        assert not torch.equal(before[name], parameters_of(module)), f"{name} did not change"


def test_checkpoints_load_weights_only_and_keep_the_newest(tmp_path):
    images, labels = tiny_data()
    config = tiny_config()
    fit(ImageGanFamily(config, images, labels), config.trainer_config(steps=8, checkpoint_every=2, keep_checkpoints=2), tmp_path)
    assert [step for step, _ in list_checkpoints(tmp_path / "checkpoints")] == [6, 8]
    path = latest_checkpoint(tmp_path / "checkpoints")
    state = torch.load(path, weights_only=True)  # no numpy objects, no pickled classes
    assert state["step"] == 8
    assert set(state["modules"]) == {"generator", "discriminator", "ema_generator"}
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["sampler"]["position"] == (8 * config.batch_size) % len(images)
    assert load_checkpoint(path)["step"] == 8
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    seed_everything(3)
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_index_sampler_resumes_mid_epoch_and_crosses_epochs():
    sampler = IndexSampler(num_items=10, batch_size=4, seed=1)
    for _ in range(3):  # 12 items: into epoch 1
        next(sampler)
    resumed = IndexSampler(num_items=10, batch_size=4, seed=1)
    resumed.load_state_dict(sampler.state_dict())
    assert sampler.state_dict()["epoch"] == 1
    for _ in range(5):
        assert torch.equal(next(sampler), next(resumed))
    first_epoch = torch.cat([next(IndexSampler(10, 10, seed=2))])
    assert sorted(first_epoch.tolist()) == list(range(10))


def test_a_time_budget_stops_with_a_checkpoint_and_the_run_resumes(tmp_path):
    images, labels = tiny_data()
    config = tiny_config()
    stop_after = iter([False, False, True])
    first = fit(ImageGanFamily(config, images, labels), config.trainer_config(steps=6, checkpoint_every=100), tmp_path,
                should_stop=lambda: next(stop_after))
    assert (first.step, first.finished) == (2, False)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-000002.pt"
    second = fit(ImageGanFamily(config, images, labels), config.trainer_config(steps=6, checkpoint_every=100), tmp_path)
    assert (second.resumed_from, second.step, second.finished) == (2, 6, True)
    timed = fit(ImageGanFamily(config, images, labels), config.trainer_config(steps=10_000, max_seconds=0.0), tmp_path / "timed")
    assert timed.step == 0 and not timed.finished


def _train_command(data: Path, run_dir: Path, steps: int, checkpoint_every: int) -> list[str]:
    return [
        sys.executable, "-m", "models.image_gan", "--data", str(data), "--run-dir", str(run_dir),
        "--widths", "16,8", "--batch-size", "8", "--steps", str(steps), "--checkpoint-every", str(checkpoint_every),
        "--log-every", "1000", "--threads", "1", "--seed", "5",
    ]


def _subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}


def test_a_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path):
    """Bit-exact (tolerance 0) on CPU at one thread: same seed, same data order, same RNG streams."""
    images, labels = tiny_data()
    data = tmp_path / "data.npz"
    np.savez(data, images=images, labels=labels, class_names=np.array(["a", "b", "c"]))
    steps, every = 120, 10

    # the uninterrupted run in this process (same code path as the CLI, one thread too)
    from models.image_gan import main
    assert main(_train_command(data, tmp_path / "whole", steps, every)[3:])["finished"]

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(_train_command(data, killed_dir, steps, every), env=_subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while latest_checkpoint(killed_dir / "checkpoints") is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    reached = [step for step, _ in list_checkpoints(killed_dir / "checkpoints")]
    assert reached and max(reached) < steps, f"the kill came too late to test a resume: {reached}"

    out = subprocess.run(_train_command(data, killed_dir, steps, every), env=_subprocess_env(), check=True,
                         capture_output=True, text=True, timeout=300)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] == max(reached) and summary["finished"]

    whole = load_checkpoint(latest_checkpoint(tmp_path / "whole" / "checkpoints"))
    resumed = load_checkpoint(latest_checkpoint(killed_dir / "checkpoints"))
    assert whole["step"] == resumed["step"] == steps
    for name in whole["modules"]:
        for key, tensor in whole["modules"][name].items():
            assert torch.equal(tensor, resumed["modules"][name][key]), f"{name}.{key} differs"
    assert torch.equal(whole["rng"]["torch"], resumed["rng"]["torch"])


def test_sample_is_uint8_nhwc_and_determined_by_seed(tmp_path):
    images, labels = tiny_data()
    config = tiny_config()
    family = ImageGanFamily(config, images, labels)
    fit(family, config.trainer_config(steps=3), tmp_path)
    generator = family.sampling_generator()
    a = sample(generator, 5, seed=1)
    assert a.shape == (5, RESOLUTION, RESOLUTION, 1) and a.dtype == np.uint8
    assert np.array_equal(a, sample(generator, 5, seed=1))
    assert not np.array_equal(a, sample(generator, 5, seed=2))
    assert not np.array_equal(sample(generator, 5, seed=1, labels=0), sample(generator, 5, seed=1, labels=2))
    strip = interpolate(generator, seed_a=1, seed_b=2, steps=6, label_a=0, label_b=1)
    assert strip.shape == (6, RESOLUTION, RESOLUTION, 1) and strip.dtype == np.uint8


def test_bundle_reloads_to_the_same_samples_with_weights_only(tmp_path):
    images, labels = tiny_data()
    config = tiny_config()
    family = ImageGanFamily(config, images, labels, class_names=["a", "b", "c"])
    fit(family, config.trainer_config(steps=3), tmp_path)
    path = save_bundle(export_bundle(family, step=3), tmp_path / "bundle.pt")
    bundle = torch.load(path, weights_only=True)
    assert bundle["class_names"] == ["a", "b", "c"] and bundle["config"]["widths"] == [16, 8]
    assert np.array_equal(sample(load_generator(bundle), 6, seed=4), sample(family.sampling_generator(), 6, seed=4))


def test_trains_from_real_shards(tmp_path):
    """The pipeline's path: PNG files -> ingest -> Parquet shards -> uint8 tensors + labels -> fit."""
    images, labels = tiny_data(n=24)
    names = ["left", "middle", "right"]
    for i, (pixels, label) in enumerate(zip(images, labels)):
        (tmp_path / "raw" / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[:, :, 0]).save(tmp_path / "raw" / names[label] / f"{i:03d}.png")
    report = ingest(IMAGES, ImageCorpusConfig(resolution=RESOLUTION), tmp_path / "raw", tmp_path / "out",
                    IngestSettings(workers=1))
    table = read_shards(shard_paths(report.manifest_path, "images"))
    train = table.filter(table.column("split").to_numpy(zero_copy_only=False) == "train")
    pixels = tensors_from_table(train, "pixels")
    class_names = sorted(set(train.column("label").to_pylist()))
    label_ids = np.array([class_names.index(name) for name in train.column("label").to_pylist()])
    config = tiny_config()
    result = fit(ImageGanFamily(config, pixels, label_ids, class_names), config.trainer_config(steps=2), tmp_path / "run")
    assert result.finished and np.isfinite(result.metrics["d_loss"])


def test_frechet_and_kernel_distance_are_zero_on_itself_and_grow_with_a_shift():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((600, 16))
    other = rng.standard_normal((600, 16))
    assert metrics.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    same_distribution = metrics.frechet_distance(feats, other)
    shifted = metrics.frechet_distance(feats, other + 1.0)
    assert shifted > 10 * same_distribution and shifted == pytest.approx(16.0, rel=0.15)  # ||shift||^2 = 16
    kid_same, _ = metrics.kernel_distance(feats, other, num_subsets=10, subset_size=200)
    kid_shifted, _ = metrics.kernel_distance(feats, other + 1.0, num_subsets=10, subset_size=200)
    assert abs(kid_same) < 0.05 < kid_shifted


def test_memorization_flags_an_exact_copy_and_names_its_source():
    train, _ = tiny_data(n=40)
    rng = np.random.default_rng(1)
    fresh = rng.integers(0, 256, size=(3, RESOLUTION, RESOLUTION, 1), dtype=np.uint8)
    samples = np.concatenate([fresh, train[17:18]])
    found = metrics.memorization(samples, train, reference_size=20)
    assert found["near_copy"].tolist() == [False, False, False, True]
    assert found["near_copy_count"] == 1 and found["nearest_index"][3] == 17
    assert found["nearest_distance"][3] < 1e-2 < found["typical_nn_distance"]


def test_classifier_report_has_a_floor_and_coverage():
    images, labels = tiny_data(n=60)
    heldout, heldout_labels = tiny_data(n=30, seed=1)
    classifier, accuracy = metrics.train_classifier(images, labels, heldout, heldout_labels,
                                                    metrics.ClassifierConfig(epochs=3, batch_size=16))
    assert accuracy > 0.9  # the bar position is easy
    noise = np.random.default_rng(2).integers(0, 256, size=(30, RESOLUTION, RESOLUTION, 1), dtype=np.uint8)
    report = metrics.gan_report(classifier, images, heldout, {"noise": noise}, num_classes=CLASSES,
                                kid_subsets=5, kid_subset_size=20)
    assert report["real_vs_real"]["fid_classifier"] < report["noise"]["fid_classifier"]
    assert report["real_vs_real"]["classes_covered"] == CLASSES
    assert "fid_classifier" in metrics.format_report(report)
    assert metrics.class_coverage([0, 0, 0], 3) == {"classes_covered": 1, "kl_to_uniform": pytest.approx(np.log(3))}


FRESH_PREDICT = """
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(sys.argv[1])
    by_name = model.predict(pd.DataFrame({"n": [5], "seed": [3], "label": ["b"]}))
    by_dict = model.predict({"n": 5, "seed": 3, "label": 1})
    default = model.predict(pd.DataFrame({"seed": [0]}))
    strip = model.predict({"n": 4, "seed": 1, "interpolate_to": 2})
    module = sys.modules[type(model.unwrap_python_model()).__module__].__file__
    print(json.dumps({"shape": list(by_name.shape), "dtype": str(by_name.dtype), "same": bool((by_name == by_dict).all()),
                      "default_shape": list(default.shape), "strip_shape": list(strip.shape), "module": module}))
"""


def test_pyfunc_predicts_in_a_fresh_process_with_only_models_on_the_path(tmp_path):
    import mlflow.pyfunc

    from models.pyfunc import ImageGanPyfunc

    images, labels = tiny_data()
    config = tiny_config()
    family = ImageGanFamily(config, images, labels, class_names=["a", "b", "c"])
    fit(family, config.trainer_config(steps=2), tmp_path / "run")
    bundle = save_bundle(export_bundle(family, step=2), tmp_path / "bundle.pt")
    model_dir = tmp_path / "model"
    mlflow.pyfunc.save_model(str(model_dir), python_model=ImageGanPyfunc(), artifacts={"bundle": str(bundle)},
                             code_paths=[str(PROJECT_ROOT / "models")])
    result = run_in_fresh_process(FRESH_PREDICT, model_dir)
    assert result == {**result, "shape": [5, RESOLUTION, RESOLUTION, 1], "dtype": "uint8", "same": True,
                      "default_shape": [16, RESOLUTION, RESOLUTION, 1], "strip_shape": [4, RESOLUTION, RESOLUTION, 1]}
    assert result["module"].startswith(str(model_dir)), "the pyfunc must come from the model's own code path"
