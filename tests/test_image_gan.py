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
from models import classifier as classifiers
from models import distances
from models.bundle import save_bundle
from models.image_gan import CHAMPION_RULE, FAMILY
from models.image_gan import metrics
from models.image_gan.config import ImageGanConfig
from models.image_gan.data import load_image_split
from models.image_gan.sampling import interpolate, load_generator, sample
from models.image_gan.training import ImageGanFamily, export_bundle
from models.train import TrainingRequest
from models.train import main as train_main
from models.batches import IndexSampler
from models.trainer import (
    fit, latest_checkpoint, list_checkpoints, load_checkpoint, restore_rng_state,
    rng_state, seed_everything,
)
from tests.fresh_process import run_in_fresh_process

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESOLUTION, CLASSES = 16, 3
TINY = dict(resolution=RESOLUTION, widths=(16, 8), latent_dim=8, embed_dim=4, num_classes=CLASSES, batch_size=8)


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


@pytest.mark.parametrize("architecture", ["dcgan", "wgan-gp", "sngan"])
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


def test_the_trainer_trains_convolutions_in_channels_last_on_cpu_unless_told_not_to(tmp_path):
    images, labels = tiny_data()
    for setting, channels_last in (("auto", True), ("off", False)):
        config = tiny_config()
        family = ImageGanFamily(config, images, labels)
        fit(family, config.trainer_config(steps=1, channels_last=setting), tmp_path / setting)
        # kernels wider than 1x1 over more than one channel: the two layouts differ only there
        kernels = [p for m in family.modules().values() for p in m.parameters()
                   if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1]
        assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) == channels_last for p in kernels)


def test_sngan_discriminator_is_projection_conditioned_and_each_weight_has_spectral_norm_one(tmp_path):
    images, labels = tiny_data()
    config = tiny_config(architecture="sngan")
    assert config.d_conditioning == "projection" and config.n_critic == 1  # the profile switch; DCGAN's optimizer
    family = ImageGanFamily(config, images, labels)
    discriminator = family.discriminator
    first_rows = {name: values[:8] for name, values in family.rows.columns.items()}
    real, batch_labels = family.make_batch(first_rows, torch.device("cpu"))
    assert discriminator(real, batch_labels).shape == (8,)
    assert family.generator(torch.randn(8, config.latent_dim), batch_labels).shape == (8, 1, RESOLUTION, RESOLUTION)
    before = {name: p.detach().clone() for name, p in discriminator.named_parameters()}
    assert sum(".parametrizations.weight.original" in name for name in before) == 4  # 2 convs, score, embedding
    fit(family, config.trainer_config(steps=5), tmp_path)
    for name, parameter in discriminator.named_parameters():
        assert not torch.equal(before[name], parameter.detach()), f"{name} did not change"
    discriminator.eval()  # read the normalised weights without another power iteration
    for name, module in discriminator.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Embedding)):
            sigma = torch.linalg.matrix_norm(module.weight.detach().flatten(1), ord=2).item()
            assert sigma == pytest.approx(1.0, abs=0.05), f"{name}: spectral norm {sigma}"
            raw = torch.linalg.matrix_norm(module.parametrizations.weight.original.detach().flatten(1), ord=2).item()
            assert abs(raw - 1.0) > 0.2, f"{name}: the raw weight is normalised already; the test would prove nothing"


def test_sngan_resumes_through_the_trainer_to_the_uninterrupted_weights(tmp_path):
    images, labels = tiny_data()
    config = tiny_config(architecture="sngan")
    trainer = config.trainer_config(steps=8, checkpoint_every=4)
    whole = ImageGanFamily(config, images, labels)
    fit(whole, trainer, tmp_path / "whole")
    stop_after = iter([False] * 4 + [True])
    first = fit(ImageGanFamily(config, images, labels), trainer, tmp_path / "split", should_stop=lambda: next(stop_after))
    assert (first.step, first.finished) == (4, False)
    resumed_family = ImageGanFamily(config, images, labels)
    resumed = fit(resumed_family, trainer, tmp_path / "split")
    assert (resumed.resumed_from, resumed.step) == (4, 8)
    for name, module in whole.modules().items():
        expected, actual = module.state_dict(), resumed_family.modules()[name].state_dict()
        assert set(expected) == set(actual)
        for key in expected:  # the power iteration's u and v vectors too
            assert torch.equal(expected[key], actual[key]), f"{name}.{key} differs"


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
    spent = 1e-12  # minutes: the budget is spent before the first step
    timed = fit(ImageGanFamily(config, images, labels), config.trainer_config(steps=10_000, max_minutes=spent), tmp_path / "timed")
    assert timed.step == 0 and not timed.finished


def ingest_bar_images(root: Path, n: int, heldout_percent: int = 10) -> Path:
    """tiny_data as PNG files in one folder per class, ingested into shards; returns the manifest."""
    images, labels = tiny_data(n=n)
    names = ["left", "middle", "right"]
    for i, (pixels, label) in enumerate(zip(images, labels)):
        (root / "raw" / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[:, :, 0]).save(root / "raw" / names[label] / f"{i:03d}.png")
    report = ingest(IMAGES, ImageCorpusConfig(resolution=RESOLUTION), root / "raw", root / "out",
                    IngestSettings(workers=1, heldout_percent=heldout_percent))
    return report.manifest_path


def _train_command(request: Path, manifest: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "models.train", "--family", FAMILY.name, "--config", str(request),
            "--manifest", str(manifest), "--run-dir", str(run_dir)]


def _subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}


def test_a_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path):
    """Bit-exact (tolerance 0) on CPU at one thread: same seed, same data order, same RNG streams."""
    manifest = ingest_bar_images(tmp_path, n=48, heldout_percent=30)
    data = load_image_split(manifest)
    classifier, _ = classifiers.train_classifier(data.train_images, data.train_labels, data.heldout_images,
                                                 data.heldout_labels, classifiers.ClassifierConfig(epochs=1))
    weights = classifiers.save_classifier(classifier, tmp_path / "classifier.pt", data.class_names, 0.0)
    steps, every = 120, 10
    request = tmp_path / "request.json"
    request.write_text(TrainingRequest(
        family=FAMILY.name, model_config=tiny_config(steps=steps, seed=5).to_dict(), options={"classifier": str(weights)},
        trainer={"checkpoint_every": every, "log_every": 1000}, device="cpu", threads=1).to_json())

    # the uninterrupted run in this process (the entry point's code path, one thread too)
    assert train_main(_train_command(request, manifest, tmp_path / "whole")[3:]) == 0
    assert json.loads((tmp_path / "whole" / "outcome.json").read_text())["step"] == steps

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(_train_command(request, manifest, killed_dir), env=_subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while latest_checkpoint(killed_dir / "checkpoints") is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    reached = [step for step, _ in list_checkpoints(killed_dir / "checkpoints")]
    assert reached and max(reached) < steps, f"the kill came too late to test a resume: {reached}"

    out = subprocess.run(_train_command(request, manifest, killed_dir), env=_subprocess_env(), check=True,
                         capture_output=True, text=True, timeout=300)
    outcome = json.loads(out.stdout.strip().splitlines()[-1])["outcome"]
    assert outcome["resumed_from"] == max(reached) and outcome["step"] == steps

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
    manifest = ingest_bar_images(tmp_path, n=24)
    table = read_shards(shard_paths(manifest, "images"))
    train = table.filter(table.column("split").to_numpy(zero_copy_only=False) == "train")
    pixels = tensors_from_table(train, "pixels")
    class_names = sorted(set(train.column("label").to_pylist()))
    label_ids = np.array([class_names.index(name) for name in train.column("label").to_pylist()])
    config = tiny_config()
    result = fit(ImageGanFamily(config, pixels, label_ids, class_names), config.trainer_config(steps=2), tmp_path / "run")
    assert result.finished and np.isfinite(result.metrics["d_loss"])
    split = load_image_split(manifest)  # the family's own reader gives the same rows
    assert np.array_equal(split.train_images, pixels) and np.array_equal(split.train_labels, label_ids)
    assert split.class_names == class_names


def test_frechet_and_kernel_distance_are_zero_on_itself_and_grow_with_a_shift():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((600, 16))
    other = rng.standard_normal((600, 16))
    assert distances.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    same_distribution = distances.frechet_distance(feats, other)
    shifted = distances.frechet_distance(feats, other + 1.0)
    assert shifted > 10 * same_distribution and shifted == pytest.approx(16.0, rel=0.15)  # ||shift||^2 = 16
    kid_same, _ = distances.kernel_distance(feats, other, num_subsets=10, subset_size=200)
    kid_shifted, _ = distances.kernel_distance(feats, other + 1.0, num_subsets=10, subset_size=200)
    assert abs(kid_same) < 0.05 < kid_shifted


def test_memorization_flags_an_exact_copy_and_names_its_source():
    train, _ = tiny_data(n=40)
    rng = np.random.default_rng(1)
    fresh = rng.integers(0, 256, size=(3, RESOLUTION, RESOLUTION, 1), dtype=np.uint8)
    samples = np.concatenate([fresh, train[17:18]])
    found = distances.memorization(samples, train, reference_size=20)
    assert found["near_copy"].tolist() == [False, False, False, True]
    assert found["near_copy_count"] == 1 and found["nearest_index"][3] == 17
    assert found["nearest_distance"][3] < 1e-2 < found["typical_nn_distance"]


def noisy_label_data(n: int, seed: int, flip: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """tiny_data with a fraction `flip` of labels redrawn at random: no classifier can score
    much above 1 - flip * (CLASSES - 1) / CLASSES on it, so label_accuracy has room to be wrong."""
    images, labels = tiny_data(n, seed)
    rng = np.random.default_rng(seed + 100)
    redraw = rng.random(n) < flip
    labels = np.where(redraw, rng.integers(0, CLASSES, n), labels)
    return images, labels


@pytest.fixture(scope="module")
def bar_classifier():
    images, labels = tiny_data(n=90)
    heldout, heldout_labels = noisy_label_data(300, seed=1)
    classifier, accuracy = classifiers.train_classifier(images, labels, heldout, heldout_labels,
                                                    classifiers.ClassifierConfig(epochs=10, batch_size=16))
    return classifier, accuracy, images


def test_label_accuracy_is_chance_for_an_untrained_generator_and_heldout_accuracy_for_real_images(bar_classifier):
    classifier, heldout_accuracy, train = bar_classifier
    # the bar is learned; only the redrawn labels (30% of them, 2/3 of those wrong) are missed
    assert 0.7 < heldout_accuracy < 0.9
    n = 300
    real, real_labels = noisy_label_data(n, seed=2)  # a second held-out draw
    torch.manual_seed(0)
    untrained = ImageGanFamily(tiny_config(), train, np.arange(len(train)) % CLASSES).sampling_generator()
    conditioned = np.arange(n) % CLASSES
    fakes = metrics.LabelledImages(sample(untrained, n, seed=0, labels=conditioned), conditioned)
    report = metrics.gan_report(classifier, train, metrics.LabelledImages(real, real_labels),
                                {"untrained_generator": fakes}, kid_subsets=5)
    # Two estimates of one accuracy on 300 images each: the binomial std of their difference is
    # sqrt(2 * 0.8 * 0.2 / 300) = 0.033, so 0.1 is three of them.
    assert report["real_vs_real"]["label_accuracy"] == pytest.approx(heldout_accuracy, abs=0.1)
    # A generator whose images do not depend on the label scores 1/3 on balanced labels, with a
    # binomial std of sqrt(1/3 * 2/3 / 300) = 0.027; 0.1 leaves some room for the weak label
    # dependence an untrained generator has.
    assert report["untrained_generator"]["label_accuracy"] == pytest.approx(1 / CLASSES, abs=0.1)
    # the metric itself: real images scored against the right labels, then against shifted ones
    assert classifiers.label_accuracy(classifier, *tiny_data(n, seed=3)) == 1.0
    assert classifiers.label_accuracy(classifier, real, (real_labels + 1) % CLASSES) < 0.25


def test_precision_and_recall_of_a_set_against_itself_and_disjoint_clusters():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((400, 16))
    assert distances.precision_recall(feats, feats) == (1.0, 1.0)  # every point lies in its own ball
    far = rng.standard_normal((400, 16)) + 50.0
    assert distances.precision_recall(feats, far) == (0.0, 0.0)


def test_precision_and_recall_tell_dropped_modes_from_off_manifold_samples():
    rng = np.random.default_rng(1)
    centres = np.zeros(8), np.full(8, 30.0)

    def draw(n_per_mode, modes=centres):
        return np.concatenate([rng.standard_normal((n_per_mode, 8)) + centre for centre in modes])

    real = draw(300)
    # k-NN balls miss some of a second draw of the same distribution; the cases below are
    # measured against that, not against 1
    same_precision, same_recall = distances.precision_recall(real, draw(300))
    assert same_precision > 0.7 and same_recall > 0.7
    precision, recall = distances.precision_recall(real, draw(600, centres[:1]))  # on the manifold, one mode dropped
    assert precision == pytest.approx(same_precision, abs=0.05) and recall == pytest.approx(same_recall / 2, abs=0.05)
    half_off = draw(300)
    half_off[::2] += 100.0  # half the samples, from both modes, far from any real point
    precision, _ = distances.precision_recall(real, half_off)
    assert precision == pytest.approx(same_precision / 2, abs=0.05)


def test_kid_subsets_smaller_than_the_set_have_a_spread():
    rng = np.random.default_rng(2)
    feats, other = rng.standard_normal((200, 16)), rng.standard_normal((2000, 16))
    assert distances.kid_subset_size(200) == 100 and distances.kid_subset_size(5000) == distances.KID_SUBSET_SIZE
    _, std = distances.kernel_distance(feats, other, num_subsets=20, subset_size=distances.kid_subset_size(200))
    assert std > 0


def test_report_rows_and_table_say_what_was_compared(bar_classifier):
    classifier, _, train = bar_classifier
    heldout, heldout_labels = noisy_label_data(60, seed=4)
    noise = np.random.default_rng(2).integers(0, 256, size=(80, RESOLUTION, RESOLUTION, 1), dtype=np.uint8)
    report = metrics.gan_report(classifier, train, metrics.LabelledImages(heldout, heldout_labels),
                                {"noise": metrics.LabelledImages(noise)}, kid_subsets=10)
    floor, noise_row = report["real_vs_real"], report["noise"]
    assert floor["n"] == noise_row["n"] == 60 and floor["kid_subset_size"] == 30
    assert floor["kid_classifier_std"] > 0
    assert floor["fid_classifier"] < noise_row["fid_classifier"]
    assert floor["precision"] > noise_row["precision"] and floor["recall"] > noise_row["recall"]
    assert np.isnan(noise_row["label_accuracy"])  # no labels given: not scored
    table = metrics.format_report(report)
    assert "| real_vs_real | 60 |" in table and "(30) |" in table and "| n/a |" in table
    assert "10 random subsets of 30" in table
    assert "classes" not in table and "KL" not in table


def test_a_lower_fid_does_not_win_when_samples_lose_their_labels():
    champion = {"fid_classifier": 20.0, "label_accuracy": 0.80}
    assert CHAMPION_RULE.judge({"fid_classifier": 15.0, "label_accuracy": 0.77}, champion)[0]
    promoted, reasons = CHAMPION_RULE.judge({"fid_classifier": 15.0, "label_accuracy": 0.70}, champion)
    assert not promoted and reasons[-1].startswith("guard label_accuracy") and reasons[-1].endswith("fails")


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


def test_pyfunc_predicts_in_a_fresh_process_with_only_its_code_paths(tmp_path):
    import mlflow.pyfunc

    from models.image_gan.pyfunc import ImageGanPyfunc

    images, labels = tiny_data()
    # the architecture that is not the default (the default's goes through tests/test_end_to_end.py)
    config = tiny_config(architecture="sngan")
    family = ImageGanFamily(config, images, labels, class_names=["a", "b", "c"])
    fit(family, config.trainer_config(steps=2), tmp_path / "run")
    bundle = save_bundle(export_bundle(family, step=2), tmp_path / "bundle.pt")
    model_dir = tmp_path / "model"
    mlflow.pyfunc.save_model(str(model_dir), python_model=ImageGanPyfunc(), artifacts={"bundle": str(bundle)},
                             code_paths=FAMILY.code_paths())
    result = run_in_fresh_process(FRESH_PREDICT, model_dir)
    assert result == {**result, "shape": [5, RESOLUTION, RESOLUTION, 1], "dtype": "uint8", "same": True,
                      "default_shape": [16, RESOLUTION, RESOLUTION, 1], "strip_shape": [4, RESOLUTION, RESOLUTION, 1]}
    assert result["module"].startswith(str(model_dir)), "the pyfunc must come from the model's own code path"


def test_sampling_and_the_pyfunc_load_neither_training_nor_metrics():
    """The registered model's import graph: config, networks, sampling; never the training side."""
    script = ("import json, sys; import models.image_gan.pyfunc, models.image_gan.sampling; "
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('models', 'common', 'corpora', 'dagster', 'assets'))))")
    out = subprocess.run([sys.executable, "-c", script], env=_subprocess_env(), cwd=PROJECT_ROOT, check=True,
                         capture_output=True, text=True, timeout=120)
    loaded = set(json.loads(out.stdout))
    assert {"models.image_gan.sampling", "models.image_gan.pyfunc"} <= loaded
    forbidden = {"models.image_gan.training", "models.image_gan.metrics", "models.image_gan.data", "models.trainer",
                 "models.train"}
    assert not loaded & forbidden and not any(m.split(".")[0] in ("corpora", "dagster", "assets") for m in loaded)


def test_the_classifier_file_reloads_weights_only_to_the_same_predictions(bar_classifier, tmp_path):
    classifier, accuracy, train = bar_classifier
    path = classifiers.save_classifier(classifier, tmp_path / "classifier.pt", ["a", "b", "c"], accuracy)
    saved = torch.load(path, weights_only=True)
    assert saved["class_names"] == ["a", "b", "c"] and saved["channels"] == 1 and saved["heldout_accuracy"] == accuracy
    reloaded = classifiers.load_classifier(path)
    assert np.array_equal(classifiers.predict_labels(reloaded, train), classifiers.predict_labels(classifier, train))


def test_kid_against_one_reference_is_the_same_with_its_subset_sums_shared():
    rng = np.random.default_rng(0)
    reference, first, second = rng.normal(size=(300, 8)), rng.normal(size=(200, 8)), rng.normal(0.5, 1, (200, 8))
    shared: dict = {}
    alone = [distances.kernel_distance(s, reference, 20, 50, seed=3) for s in (first, second)]
    together = [distances.kernel_distance(s, reference, 20, 50, seed=3, within_b=shared) for s in (first, second)]
    assert np.allclose(together, alone, rtol=1e-12, atol=0) and len(shared) == 20
    assert together[1][0] > together[0][0] + 0.05  # the shifted set is farther
