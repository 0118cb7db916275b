"""The painting family: StyleGAN2-lite and FastGAN, style transfer, metrics and pyfunc, on tiny data."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corpora.preview import contact_sheet
from models.bundle import save_bundle
from models.classifier import FeatureClassifier
from models.painting_gan import FAMILY
from models.painting_gan.augment import diff_augment, random_crops
from models.painting_gan.config import PaintingGanConfig
from models.painting_gan.fastgan import (
    DECODED_SIZE, NOISE_MODES, Blur, FastGanDiscriminator, FastGanGenerator, NoiseInjection, SkipLayerExcitation,
    reconstruction_targets,
)
from models.painting_gan.metrics import painting_report, painting_reports, untrained_generator
from models.painting_gan.networks import modulated_conv2d
from models.painting_gan.sampling import (
    load_bundle, load_generator, num_style_layers, sample, style_mix, style_mixing_grid, truncation_sweep,
)
from models.painting_gan.style_transfer import StyleTransferConfig, gram_matrix, transfer, triptych
from models.painting_gan.training import PaintingGanFamily, export_bundle
from models.trainer import fit, latest_checkpoint, load_checkpoint
from tests.fresh_process import run_in_fresh_process

RESOLUTION = 16
TINY = dict(resolution=RESOLUTION, widths=(16, 16, 8), z_dim=8, w_dim=8, mapping_layers=2, batch_size=4,
            r1_every=2)

# FastGAN needs 4 stages for one skip-layer excitation (4x4 gates 32x32)
FASTGAN_RESOLUTION = 32
TINY_FASTGAN = dict(resolution=FASTGAN_RESOLUTION, widths=(16, 16, 8, 8), z_dim=8, batch_size=4)
TINY_BY_ARCHITECTURE = {"stylegan2": ("stylegan2-demo", TINY), "fastgan": ("demo", TINY_FASTGAN)}


def tiny_pictures(n: int = 5, size: int = 40, seed: int = 0) -> np.ndarray:
    """Colour stripes of a per-picture frequency plus noise: crops of them differ visibly."""
    rng = np.random.default_rng(seed)
    x = np.arange(size)
    pictures = rng.integers(0, 60, size=(n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        stripes = ((np.sin(x * (i + 1) * 0.3) + 1) * 90).astype(np.uint8)
        pictures[i, :, :, i % 3] += stripes[None, :]
    return pictures


def tiny_config(architecture: str = "stylegan2", **overrides) -> PaintingGanConfig:
    profile, tiny = TINY_BY_ARCHITECTURE[architecture]
    return PaintingGanConfig.profile(profile, **{**tiny, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A family after a few steps, shared by the sampling and export tests."""
    config = tiny_config()
    family = PaintingGanFamily(config, tiny_pictures())
    fit(family, config.trainer_config(steps=4), tmp_path_factory.mktemp("run"))
    return family


@pytest.fixture(scope="module")
def trained_fastgan(tmp_path_factory):
    config = tiny_config("fastgan")
    family = PaintingGanFamily(config, tiny_pictures())
    fit(family, config.trainer_config(steps=4), tmp_path_factory.mktemp("run"))
    return family


def parameters_of(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


# --- modulated convolution ---------------------------------------------------------------


def reference_modulated_conv(x, weight, styles, demodulate, padding):
    """One sample at a time: scale the kernel's input channels, normalize each output kernel, conv."""
    outputs = []
    for sample_x, style in zip(x, styles):
        kernel = weight * style[None, :, None, None]
        if demodulate:
            kernel = kernel / kernel.square().sum(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()
        outputs.append(F.conv2d(sample_x[None], kernel, padding=padding))
    return torch.cat(outputs)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_matches_a_per_sample_reference(fused, demodulate):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, 7, generator=generator)
    weight = torch.randn(4, 5, 3, 3, generator=generator)
    styles = torch.rand(3, 5, generator=generator) * 2 + 0.1
    got = modulated_conv2d(x, weight, styles, demodulate=demodulate, padding=1, fused=fused)
    torch.testing.assert_close(got, reference_modulated_conv(x, weight, styles, demodulate, 1), rtol=1e-4, atol=1e-5)


def test_demodulation_gives_unit_variance_outputs_whatever_the_style():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(6, 16, 3, 3, generator=generator)
    variances = []
    for _ in range(50):  # padding 0: every output sees 16*3*3 unit-variance inputs
        x = torch.randn(8, 16, 10, 10, generator=generator)
        styles = torch.rand(8, 16, generator=generator) * 3 + 0.05  # wildly different per sample
        variances.append(modulated_conv2d(x, weight, styles, demodulate=True).var(dim=(0, 2, 3)))
    per_channel = torch.stack(variances).mean(0)
    assert torch.allclose(per_channel, torch.ones(6), atol=0.05), per_channel


def test_diffaugment_is_differentiable_and_keeps_the_shape():
    x = torch.randn(4, 3, RESOLUTION, RESOLUTION, requires_grad=True)
    out = diff_augment(x, "color,translation,cutout")
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_random_crops_are_deterministic_and_in_the_requested_size():
    pictures = tiny_pictures()
    a = random_crops(pictures, 6, RESOLUTION, seed=3)
    assert a.shape == (6, RESOLUTION, RESOLUTION, 3) and a.dtype == np.uint8
    assert np.array_equal(a, random_crops(pictures, 6, RESOLUTION, seed=3))
    assert not np.array_equal(a, random_crops(pictures, 6, RESOLUTION, seed=4))


# --- training ------------------------------------------------------------------------------


def test_a_few_steps_give_finite_losses_change_every_network_and_reload_weights_only(tmp_path):
    config = tiny_config()
    family = PaintingGanFamily(config, tiny_pictures())
    before = {name: parameters_of(m) for name, m in family.modules().items()}
    logged = []
    result = fit(family, config.trainer_config(steps=4, log_every=1, checkpoint_every=2), tmp_path,
                 log=lambda step, m: logged.append(m))
    assert result.finished and result.step == 4
    assert {"d_loss", "g_loss"} <= set(logged[0]) and any("r1" in m for m in logged)
    assert all(np.isfinite(v) for m in logged for v in m.values())
    for name, module in family.modules().items():
        assert not torch.equal(before[name], parameters_of(module)), f"{name} did not change"
    assert family.generator.mapping.w_avg.abs().sum() > 0  # w_avg is tracked

    state = torch.load(latest_checkpoint(tmp_path / "checkpoints"), weights_only=True)
    assert state["step"] == 4 and set(state["modules"]) == {"generator", "discriminator", "ema_generator"}
    resumed = PaintingGanFamily(config, tiny_pictures())
    resumed_result = fit(resumed, config.trainer_config(steps=4), tmp_path)  # nothing left to do
    assert resumed_result.resumed_from == 4
    for name, module in resumed.modules().items():
        assert torch.equal(parameters_of(module), parameters_of(family.modules()[name]))


@pytest.mark.parametrize("architecture", ["stylegan2", "fastgan"])
def test_a_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path, architecture):
    config = tiny_config(architecture)
    fit(PaintingGanFamily(config, tiny_pictures()), config.trainer_config(steps=6, checkpoint_every=3), tmp_path / "whole")
    stop_after = iter([False, False, False, True])
    first = fit(PaintingGanFamily(config, tiny_pictures()), config.trainer_config(steps=6, checkpoint_every=100),
                tmp_path / "split", should_stop=lambda: next(stop_after))
    assert first.step == 3 and not first.finished
    fit(PaintingGanFamily(config, tiny_pictures()), config.trainer_config(steps=6, checkpoint_every=100), tmp_path / "split")
    whole = load_checkpoint(latest_checkpoint(tmp_path / "whole" / "checkpoints"))
    split = load_checkpoint(latest_checkpoint(tmp_path / "split" / "checkpoints"))
    for name in whole["modules"]:
        for key, tensor in whole["modules"][name].items():
            assert torch.equal(tensor, split["modules"][name][key]), f"{name}.{key} differs"


# --- sampling ------------------------------------------------------------------------------


def test_truncation_to_the_mean_makes_every_seed_the_same_image(trained):
    generator = trained.sampling_generator()
    images = sample(generator, 3, seed=1, truncation_psi=0.0)
    assert images.shape == (3, RESOLUTION, RESOLUTION, 3) and images.dtype == np.uint8
    assert np.abs(images.astype(int) - images[:1].astype(int)).max() <= 1
    free = sample(generator, 3, seed=1, truncation_psi=1.0)
    assert not np.array_equal(free[0], free[1])
    assert np.array_equal(free, sample(generator, 3, seed=1))
    rows = truncation_sweep(generator, seeds=[1, 2], psis=[0.0, 0.5, 1.0])
    assert [len(row) for row in rows] == [3, 3]
    assert np.abs(rows[1][2].astype(int) - sample(generator, 1, seed=2)[0].astype(int)).max() <= 1  # psi 1: the free sample
    sweep = contact_sheet([cell for row in rows for cell in row], columns=3, cell=None)
    assert sweep.dtype == np.uint8 and sweep.shape[0] > 2 * RESOLUTION and sweep.shape[1] > 3 * RESOLUTION


def test_style_mix_ends_are_the_two_sources(trained):
    generator = trained.sampling_generator()
    layers = num_style_layers(generator)
    assert layers == 6  # 16x16: the 4x4 conv, two convs per doubling, the last toRGB
    image_b, image_a = sample(generator, 1, seed=8), sample(generator, 1, seed=7)
    assert not np.array_equal(image_a, image_b)
    assert np.array_equal(style_mix(generator, 7, 8, crossover=0), image_b)
    assert np.array_equal(style_mix(generator, 7, 8, crossover=layers), image_a)
    middle = style_mix(generator, 7, 8, crossover=layers // 2)
    assert middle.shape == (1, RESOLUTION, RESOLUTION, 3)
    rows = style_mixing_grid(generator, row_seeds=[1, 2], col_seeds=[3, 4, 5], crossover=2)
    assert [len(row) for row in rows] == [4, 4, 4] and rows[0][0] is None  # the empty corner
    # coarse styles of column source 5, fine of row source 2 (up to rounding: rendered in a batch of three)
    assert np.abs(rows[2][3].astype(int) - style_mix(generator, 5, 2, crossover=2)[0].astype(int)).max() <= 1
    grid = contact_sheet([cell for row in rows for cell in row], columns=4, cell=None)
    assert grid.dtype == np.uint8 and grid.ndim == 3
    assert grid.shape[0] > 3 * RESOLUTION and grid.shape[1] > 4 * RESOLUTION
    assert (grid[:RESOLUTION, :RESOLUTION] == 255).all()  # the empty corner
    top, left = 2 + 2 * (RESOLUTION + 2), 2 + 3 * (RESOLUTION + 2)  # cells keep their pixels, 2 px apart and around
    assert np.array_equal(grid[top : top + RESOLUTION, left : left + RESOLUTION], rows[2][3])


def test_bundle_reloads_to_the_same_samples_with_weights_only(trained, tmp_path):
    path = save_bundle(export_bundle(trained, step=4), tmp_path / "bundle.pt")
    bundle = torch.load(path, weights_only=True)
    assert bundle["config"]["widths"] == [16, 16, 8]
    assert torch.equal(bundle["generator"]["mapping.w_avg"], trained.ema_generator.mapping.w_avg)
    generator = load_generator(load_bundle(path))
    assert np.array_equal(sample(generator, 3, seed=4, truncation_psi=0.7),
                          sample(trained.sampling_generator(), 3, seed=4, truncation_psi=0.7))


# --- FastGAN -------------------------------------------------------------------------------


def test_fastgan_networks_give_pictures_logits_and_reconstructions_of_the_right_shapes():
    config = tiny_config("fastgan")
    family = PaintingGanFamily(config, tiny_pictures())
    images = family.generator(torch.randn(3, config.z_dim))
    assert images.shape == (3, 3, FASTGAN_RESOLUTION, FASTGAN_RESOLUTION) and images.abs().max() <= 1
    family.discriminator.eval()  # BatchNorm's running statistics and a fixed spectral norm: one function
    logits, whole, part = family.discriminator.score_and_reconstruct(images, quadrant=3)
    assert logits.shape == (3, 25)  # a 5x5 map: a 4x4 conv on the 8x8 map
    assert whole.shape == part.shape == (3, 3, DECODED_SIZE, DECODED_SIZE)
    assert torch.equal(family.discriminator(images), logits)
    with pytest.raises(ValueError, match="fastgan needs a resolution"):
        tiny_config("fastgan", resolution=8, widths=(16, 8))


def test_fastgan_a_few_steps_change_every_parameter_and_log_the_reconstruction(tmp_path):
    config = tiny_config("fastgan")
    family = PaintingGanFamily(config, tiny_pictures())
    before = {name: {key: p.detach().clone() for key, p in m.named_parameters()} for name, m in family.modules().items()}
    logged = []
    fit(family, config.trainer_config(steps=3, log_every=1), tmp_path, log=lambda step, m: logged.append(m))
    assert {"d_loss", "g_loss", "reconstruction"} <= set(logged[0]) and "r1" not in logged[-1]
    assert all(np.isfinite(v) for m in logged for v in m.values())
    for name, module in family.modules().items():  # the decoders and the excitations included
        unchanged = [key for key, p in module.named_parameters() if torch.equal(p, before[name][key])]
        assert unchanged == [], f"{name}: {unchanged}"


def test_skip_layer_excitation_gates_the_high_resolution_map_channel_wise_from_the_low_one():
    torch.manual_seed(0)
    excitation = SkipLayerExcitation(low_channels=6, high_channels=5)
    low, high = torch.randn(2, 6, 4, 4), torch.randn(2, 5, 32, 32)
    gate = excitation.gate(low)
    assert gate.shape == (2, 5, 1, 1) and ((gate > 0) & (gate < 1)).all()
    torch.testing.assert_close(excitation(low, high), high * gate)  # one factor per sample and channel
    other_high = torch.randn(2, 5, 32, 32)
    torch.testing.assert_close(excitation(low, other_high) / other_high, gate.expand(-1, -1, 32, 32))
    assert not torch.allclose(excitation(low + 1, high), excitation(low, high))  # the gate follows the low map


def test_fastgan_noise_inputs_start_silent_then_vary_the_picture_and_learn_their_weight():
    torch.manual_seed(0)
    generator = FastGanGenerator(tiny_config("fastgan", noise_injection=True)).eval()
    layers = [module for module in generator.modules() if isinstance(module, NoiseInjection)]
    assert len(layers) == 4  # the comp blocks to 8x8 and to 32x32, two noise inputs each
    z = torch.randn(3, generator.z_dim)
    with torch.no_grad():
        at_start = {mode: generator(z, noise_mode=mode) for mode in NOISE_MODES}
        for mode in NOISE_MODES:  # every weight starts at 0: no mode changes a picture
            torch.testing.assert_close(at_start[mode], at_start["none"])
        for layer in layers:
            layer.weight.fill_(1.0)
        const, again = generator(z), generator(z, noise_mode="const")
        fresh, silent = generator(z, noise_mode="random"), generator(z, noise_mode="none")
    assert torch.equal(const, again)  # sampling: the maps drawn at construction, a picture per latent
    assert not torch.allclose(const, fresh) and not torch.allclose(const, silent)
    for layer in layers:
        layer.weight.data.zero_()
    generator.train()(z, noise_mode="random").square().mean().backward()
    assert all(layer.weight.grad is not None and layer.weight.grad.abs() > 0 for layer in layers)  # learnt from 0
    with pytest.raises(ValueError, match="noise_mode"):
        generator(z, noise_mode="fresh")


def test_blurred_downsampling_keeps_a_flat_map_and_removes_the_stride_period():
    blur = Blur(2)
    flat = torch.full((1, 2, 8, 8), 3.0)
    torch.testing.assert_close(blur(flat), flat)  # the edges replicated: flat up to the border
    rows, columns = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    checkerboard = ((-1.0) ** (rows + columns)).expand(1, 2, 8, 8)
    assert blur(checkerboard)[..., 1:-1, 1:-1].abs().max() < 1e-6  # what a stride-2 conv would fold into its map
    discriminator = FastGanDiscriminator(tiny_config("fastgan", blur_downsampling=True))
    assert all(isinstance(down.main[0], Blur) for down in discriminator.downs)
    assert not any(isinstance(m, Blur) for m in FastGanDiscriminator(tiny_config("fastgan", blur_downsampling=False)).modules())


def test_fastgan_discriminator_learns_its_features_from_the_reconstruction_too():
    """The decoders' error reaches D's own convolutions, not only the decoders: the
    self-supervision shapes the features the real/fake logits read."""
    config = tiny_config("fastgan")
    discriminator = PaintingGanFamily(config, tiny_pictures()).discriminator
    real = torch.rand(4, 3, FASTGAN_RESOLUTION, FASTGAN_RESOLUTION) * 2 - 1
    _, whole, part = discriminator.score_and_reconstruct(real, quadrant=1)
    whole_target, part_target = reconstruction_targets(real, quadrant=1)
    assert torch.equal(part_target, F.interpolate(real[:, :, :16, 16:], size=DECODED_SIZE, mode="bilinear"))
    (F.mse_loss(whole, whole_target) + F.mse_loss(part, part_target)).backward()
    trunk = [p for p in discriminator.from_rgb.parameters()] + [p for p in discriminator.downs.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trunk)
    assert all(p.grad is None for p in discriminator.logits.parameters())


def test_fastgan_style_mix_takes_the_content_of_one_seed_and_the_gates_of_the_other(trained_fastgan):
    generator = trained_fastgan.sampling_generator()
    assert num_style_layers(generator) == 2
    image_a, image_b = sample(generator, 1, seed=7), sample(generator, 1, seed=8)
    assert np.array_equal(style_mix(generator, 7, 8, crossover=0), image_b)
    assert np.array_equal(style_mix(generator, 7, 8, crossover=2), image_a)
    mixed = style_mix(generator, 7, 8, crossover=1)
    assert not np.array_equal(mixed, image_a) and not np.array_equal(mixed, image_b)
    same = sample(generator, 3, seed=1, truncation_psi=0.0)
    assert np.abs(same.astype(int) - same[:1].astype(int)).max() <= 1  # truncated to z's mean


def test_fastgan_exports_standing_statistics_that_reload_to_the_same_samples(trained_fastgan, tmp_path):
    generator = trained_fastgan.sampling_generator()
    inherited = trained_fastgan.ema_generator.initial[1].running_mean
    standing = generator.initial[1].running_mean
    assert not torch.equal(standing, inherited)  # recomputed for the EMA weights
    assert torch.equal(trained_fastgan.sampling_generator().initial[1].running_mean, standing)  # deterministic
    path = save_bundle(export_bundle(trained_fastgan, step=4), tmp_path / "bundle.pt")
    assert np.array_equal(sample(load_generator(load_bundle(path)), 3, seed=4), sample(generator, 3, seed=4))


# --- style transfer and metrics ------------------------------------------------------------


@pytest.mark.parametrize("network", ["random", "classifier"])
def test_style_transfer_lowers_the_style_loss_and_says_which_network(network):
    pictures = tiny_pictures(size=32)
    torch.manual_seed(0)
    state = FeatureClassifier().state_dict() if network == "classifier" else None
    config = StyleTransferConfig(feature_network=network, size=32, steps=30, lr=0.1)
    result = transfer(pictures[0], pictures[3], config, classifier_state=state)
    assert result.image.shape == (32, 32, 3) and result.image.dtype == np.uint8
    assert len(result.style_losses) == config.steps + 1 and result.seconds > 0
    assert result.style_losses[-1] < result.style_losses[0] / 3, result.style_losses
    assert result.feature_network.startswith("random_cnn" if network == "random" else "feature_classifier")
    again = transfer(pictures[0], pictures[3], config, classifier_state=state)
    assert np.array_equal(result.image, again.image)  # deterministic
    strip = triptych(pictures[0], pictures[3][:, :16], result)
    assert strip.shape[0] == 32 and strip.dtype == np.uint8


def test_gram_matrix_is_the_mean_channel_product():
    features = torch.randn(2, 3, 4, 5)
    gram = gram_matrix(features)
    assert gram.shape == (2, 3, 3)
    torch.testing.assert_close(gram[1, 0, 2], (features[1, 0] * features[1, 2]).mean())


def test_painting_report_has_finite_numbers_and_a_floor(trained):
    pictures = tiny_pictures()
    generator = trained.sampling_generator()
    options = dict(n=24, reference_size=48, kid_subsets=5)
    report = painting_report(generator, pictures, **options)
    assert report["n"] == 24 and report["feature_network"].startswith("random_cnn")
    for key in ("kid_style_random_cnn", "kid_style_random_cnn_std", "near_copy_fraction", "typical_nn_distance"):
        assert np.isfinite(report[key]), key
    rows = painting_reports({"model": generator, "untrained": untrained_generator(trained.config)}, pictures,
                            heldout=tiny_pictures(2, seed=9), **options)
    assert list(rows) == ["real_vs_real", "heldout_vs_train", "model", "untrained"]
    assert rows["real_vs_real"]["kid_style_random_cnn"] < rows["untrained"]["kid_style_random_cnn"]


# --- the registered model ------------------------------------------------------------------


FRESH_PREDICT = """
    import mlflow.pyfunc
    import numpy as np
    import pandas as pd

    model = mlflow.pyfunc.load_model(sys.argv[1])
    by_frame = model.predict(pd.DataFrame({"n": [3], "seed": [5], "truncation_psi": [0.7]}))
    by_dict = model.predict({"n": 3, "seed": 5, "truncation_psi": 0.7})
    default = model.predict(pd.DataFrame({"seed": [0]}))
    mix = model.predict({"mix": [1, 2], "crossover": 2})
    mix_frame = model.predict(pd.DataFrame({"mix": [np.array([1, 2])], "crossover": [2]}))
    row = model.predict({"mix": [1, 2]})
    module = sys.modules[type(model.unwrap_python_model()).__module__].__file__
    print(json.dumps({"shape": list(by_frame.shape), "dtype": str(by_frame.dtype), "same": bool((by_frame == by_dict).all()),
                      "default_shape": list(default.shape), "mix_shape": list(mix.shape),
                      "mix_same": bool((mix == mix_frame).all()), "row_shape": list(row.shape), "module": module}))
"""


@pytest.mark.parametrize("family_fixture", ["trained", "trained_fastgan"])
def test_pyfunc_predicts_in_a_fresh_process_with_only_models_on_the_path(family_fixture, request, tmp_path):
    import mlflow.pyfunc

    from models.painting_gan.pyfunc import PaintingGanPyfunc

    trained = request.getfixturevalue(family_fixture)
    side = trained.config.resolution
    bundle = save_bundle(export_bundle(trained, step=4), tmp_path / "bundle.pt")
    model_dir = tmp_path / "model"
    mlflow.pyfunc.save_model(str(model_dir), python_model=PaintingGanPyfunc(), artifacts={"bundle": str(bundle)},
                             code_paths=FAMILY.code_paths())
    result = run_in_fresh_process(FRESH_PREDICT, model_dir)
    layers = num_style_layers(trained.generator)
    assert result == {**result, "shape": [3, side, side, 3], "dtype": "uint8", "same": True,
                      "default_shape": [16, side, side, 3], "mix_shape": [1, side, side, 3],
                      "mix_same": True, "row_shape": [layers + 1, side, side, 3]}
    assert result["module"].startswith(str(model_dir)), "the pyfunc must come from the model's own code path"
    expected = style_mix(trained.sampling_generator(), 1, 2, crossover=2)
    assert expected.shape == tuple(result["mix_shape"])


def test_the_package_imports_no_other_family():
    """Everything of the family, imported in a fresh interpreter, pulls in no other family's modules."""
    script = ("import json, sys\n"
              "import models.painting_gan.training, models.painting_gan.pyfunc\n"
              "print(json.dumps(sorted(name for name in sys.modules if name.startswith('models.'))))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert any(name.startswith(f"{FAMILY.package}.") for name in loaded)
    # the other families' packages and modules, and the image family's report and pyfunc
    others = [name for name in loaded if re.match(r"models\.(image_|music_|video_|metrics$|pyfunc$)", name)]
    assert others == [], others
