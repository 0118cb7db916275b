"""The video forecaster (ConvLSTM + PixelCNN head), its metrics and its pyfunc, on tiny clips."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.bundle import save_bundle
from models.trainer import fit, latest_checkpoint, load_checkpoint
from models.video_rnn import CHAMPION_RULE, FAMILY, gallery
from models.video_rnn.gallery import gallery_clips
from models.video_rnn import metrics as video_metrics
from models.video_rnn.config import VideoRnnConfig
from models.video_rnn.convlstm import ConvLSTMCell, ConvLSTMStack
from models.video_rnn.frames import from_subpixels, model_frames, to_subpixels
from models.video_rnn.metrics import bits_per_dim, bits_per_dim_pixel_by_pixel
from models.video_rnn.network import VideoRnn
from models.video_rnn.pixelcnn import PRIOR_CENTRES, sample_frame
from models.video_rnn.sampling import (
    BUNDLE_FORMAT, WARM_START_FORMATS, bundle_examples, continue_clips, load_bundle, load_model, predict,
)
from models.video_rnn.training import VideoRnnFamily, choose_examples, export_bundle, load_clips, manifest_fps
from tests.fresh_process import run_in_fresh_process

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SIZE, CONTEXT, HORIZON, CLIP = 16, 4, 4, 10
FPS = 12.5  # a frame rate no default has, so a bundle that records it proves it was passed on
TINY = dict(context_frames=CONTEXT, horizon=HORIZON, resolution=SIZE, hidden=(8, 8), kernel=3, levels=8,
            cond_channels=4, head_width=8, head_layers=3, head_frames=2, batch_size=4, steps=4)


def moving_squares(n: int = 12, frames: int = CLIP, seed: int = 0) -> np.ndarray:
    """uint8 (n, frames, SIZE, SIZE, 3) clips of a bright square moving one pixel a frame, on noise."""
    rng = np.random.default_rng(seed)
    clips = rng.integers(0, 30, size=(n, frames, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(n):
        y, x = rng.integers(0, SIZE - 4, size=2)
        dy, dx = rng.choice([-1, 1], size=2)
        for t in range(frames):
            top, left = (y + dy * t) % (SIZE - 4), (x + dx * t) % (SIZE - 4)
            clips[i, t, top : top + 4, left : left + 4] = 220
    return clips


def tiny_config(**overrides) -> VideoRnnConfig:
    return VideoRnnConfig.profile("demo", **{**TINY, **overrides})


def parameters_of(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def perturbed_model(channels: int = 1, seed: int = 0) -> VideoRnn:
    """A tiny model with every weight moved off its initial value (the residual mean's conv starts
    at zero and the mixture's weights equal), so that no part of it is trivial."""
    torch.manual_seed(seed)
    model = VideoRnn(tiny_config(channels=channels))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def same_levels_other_pixels(clips: np.ndarray, levels: int) -> np.ndarray:
    """uint8 clips whose pixels differ from `clips` but quantize to the same levels: each pixel
    snapped to its level's 8-bit value."""
    snapped = np.rint(np.rint(clips / 255.0 * (levels - 1)) * 255.0 / (levels - 1)).astype(np.uint8)
    assert not np.array_equal(snapped, clips)
    return snapped


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model after a few steps through the shared trainer, and its bundle on disk."""
    run = tmp_path_factory.mktemp("run")
    config = tiny_config(steps=6)
    family = VideoRnnFamily(config, moving_squares())
    before = parameters_of(family.model)
    logged = []
    result = fit(family, config.trainer_config(log_every=2, checkpoint_every=3), run, log=lambda s, m: logged.append(m))
    heldout = moving_squares(n=6, seed=11)
    examples = choose_examples(config, heldout, ["a.mp4", "a.mp4", "b.mp4", "b.mp4", "c.mp4", "d.mp4"])
    bundle = save_bundle(export_bundle(family, result.step, example_contexts=examples, fps=FPS), run / "bundle.pt")
    return {"family": family, "before": before, "logged": logged, "result": result, "run": run, "bundle": bundle,
            "heldout": heldout}


# --- the ConvLSTM ------------------------------------------------------------------------


def test_convlstm_cell_shapes_and_state():
    torch.manual_seed(0)
    cell = ConvLSTMCell(in_channels=5, hidden=7, kernel=3)
    x = torch.randn(2, 5, 6, 6)
    h, c = cell(x)
    assert h.shape == c.shape == (2, 7, 6, 6)
    h2, c2 = cell(x, (h, c))
    assert not torch.equal(h2, h)  # the state matters
    assert torch.equal(cell(x, None)[0], h)  # None is the zero state


def test_a_sequence_in_one_call_equals_steps_with_the_state_passed_on():
    torch.manual_seed(0)
    stack = ConvLSTMStack(3, (6, 4), kernel=3)
    xs = torch.randn(2, 5, 3, 8, 8)
    whole, final = stack(xs)
    assert whole.shape == (2, 5, 4, 8, 8)
    states, outputs = None, []
    for t in range(5):
        out, states = stack.step(xs[:, t], states)
        outputs.append(out)
    assert torch.allclose(torch.stack(outputs, 1), whole, atol=1e-6)
    first, middle = stack(xs[:, :2])
    rest, end = stack(xs[:, 2:], middle)  # resuming a sequence from a carried state
    assert torch.allclose(torch.cat([first, rest], 1), whole, atol=1e-6)
    for (h_a, c_a), (h_b, c_b) in zip(final, end):
        assert torch.allclose(h_a, h_b, atol=1e-6) and torch.allclose(c_a, c_b, atol=1e-6)


# --- the PixelCNN head -------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_the_head_never_sees_the_current_or_later_pixels(channels):
    """d logits(p) / d input is zero at p and after it in raster order over (row, column, channel)."""
    torch.manual_seed(0)
    model = VideoRnn(tiny_config(channels=channels))
    width = SIZE * channels
    x = torch.randn(1, 1, SIZE, width, requires_grad=True)
    cond = torch.randn(1, model.head.cond.in_channels, SIZE, width)
    logits = model.head(x, cond, torch.rand(1, PRIOR_CENTRES, SIZE, width))
    assert logits.shape == (1, model.config.levels, SIZE, width)
    for i, j in [(0, 1), (0, width - 1), (1, 0), (5, 7), (8, width // 2), (SIZE - 1, width - 1), (SIZE - 1, 0)]:
        (grad,) = torch.autograd.grad(logits[0, :, i, j].sum(), x, retain_graph=True)
        flat, position = grad[0, 0].flatten().abs(), i * width + j
        assert flat[position:].max() == 0, f"pixel {(i, j)} sees itself or a later pixel"
        assert flat[:position].max() > 0, f"pixel {(i, j)} sees no earlier pixel"
    (grad,) = torch.autograd.grad(logits[0, :, 0, 0].sum(), x)
    assert grad.abs().max() == 0  # the first pixel depends on the conditioning only


def test_subpixel_layout_round_trips_and_orders_channels_within_a_pixel():
    frames = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    laid_out = to_subpixels(frames)
    assert laid_out.shape == (2, 1, 4, 15)
    assert laid_out[0, 0, 1, :3].tolist() == frames[0, :, 1, 0].tolist()  # R, G, B of pixel (1, 0)
    assert torch.equal(from_subpixels(laid_out, 3), frames)


@pytest.mark.parametrize("channels", [1, 3])
def test_pixel_by_pixel_sampling_uses_the_full_forwards_logits(channels):
    """The row-cached, pixel-incremental sampler is exact: the logits each pixel was drawn from
    equal a full forward of the head over the finished sample."""
    torch.manual_seed(1)
    model = VideoRnn(tiny_config(channels=channels)).eval()
    cond = torch.randn(2, model.head.cond.in_channels, SIZE, SIZE * channels)
    centres = torch.rand(2, PRIOR_CENTRES, SIZE, SIZE * channels)
    chosen, seen = sample_frame(model.head, cond, centres, torch.Generator().manual_seed(0), return_logits=True)
    assert chosen.shape == (2, SIZE, SIZE * channels) and 0 <= chosen.min() and chosen.max() < model.config.levels
    with torch.no_grad():
        full = model.head(model.head.embed(chosen[:, None]), cond, centres)
    assert torch.allclose(seen, full, atol=1e-4)
    assert torch.allclose(full.exp().sum(1), torch.ones(()), atol=1e-5)  # a normalised distribution per pixel
    again, _ = sample_frame(model.head, cond, centres, torch.Generator().manual_seed(0))
    assert torch.equal(chosen, again)


def test_an_untrained_heads_samples_stay_near_the_forecast():
    """The mixture's Gaussians around the forecast (here mean = previous frame): before any
    training, most samples are within a level of it."""
    torch.manual_seed(2)
    model = VideoRnn(tiny_config()).eval()
    cond = torch.randn(1, model.head.cond.in_channels, SIZE, SIZE)
    centres = torch.rand(1, 1, SIZE, SIZE).expand(1, PRIOR_CENTRES, SIZE, SIZE)
    chosen, _ = sample_frame(model.head, cond, centres, torch.Generator().manual_seed(0))
    distance = (chosen.float() - centres[:, 0] * (model.config.levels - 1)).abs()
    assert (distance <= 1.5).float().mean() > 0.6


# --- the likelihood of the quantized video -------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_bits_per_dim_equals_the_sampling_paths_likelihood_of_the_true_frames(channels):
    """bits_per_dim (one teacher-forced forward over all future frames) is the exact NLL of the
    quantized future: the sampling path, forced to put the true quantized pixel at every position
    and fed the true quantized frames back, gives the same number from its per-pixel logits."""
    model = perturbed_model(channels)
    clips = moving_squares(n=3, seed=7)
    by_forward = bits_per_dim(model, clips)
    by_sampling_path = bits_per_dim_pixel_by_pixel(model, clips)
    assert 0 < by_forward < np.log2(model.config.levels) + 1
    assert by_forward == pytest.approx(by_sampling_path, abs=1e-5)


def test_the_model_reads_only_the_quantized_frames():
    """Clips that differ only within quantization levels get the same bits/dim and the same
    samples: nothing finer than the modelled variable reaches the model. The means differ by
    exactly the last context frame's difference where `keep_detail` serves it, else not at all."""
    model = perturbed_model()
    clips = moving_squares(n=2, seed=8)[..., :1]  # one channel: the model's own, so the levels are the pixels'
    snapped = same_levels_other_pixels(clips, model.config.levels)
    assert bits_per_dim(model, clips) == bits_per_dim(model, snapped)
    assert np.array_equal(predict(model, clips[:, :CONTEXT], 3, "sample", seed=1),
                          predict(model, snapped[:, :CONTEXT], 3, "sample", seed=1))
    means, snapped_means = (predict(model, c[:, :CONTEXT], 3).astype(int) for c in (clips, snapped))
    detail = clips[:, CONTEXT - 1 : CONTEXT].astype(int) - snapped[:, CONTEXT - 1 : CONTEXT]
    inside = (means > 0) & (means < 255) & (snapped_means > 0) & (snapped_means < 255)  # not clamped
    assert model.config.keep_detail and inside.mean() > 0.3 and detail.any()
    assert np.abs(means - snapped_means - detail)[inside].max() <= 1  # 8-bit rounding
    model.config.keep_detail = False
    assert np.array_equal(predict(model, clips[:, :CONTEXT], 3), predict(model, snapped[:, :CONTEXT], 3))


def test_an_untrained_residual_model_forecasts_copy_last_exactly_with_the_detail_kept():
    """The residual's change starts at zero; the quantization of the last frame read is what
    would still stand between an untrained model's mean and the copy-last baseline."""
    model = VideoRnn(tiny_config()).eval()
    context = moving_squares(n=2, seed=3)[:, :CONTEXT, ..., :1]
    assert np.array_equal(predict(model, context, 3), video_metrics.copy_last_frame(context, 3))
    family = VideoRnnFamily(tiny_config(augment=False), moving_squares(n=4, seed=3))
    batch = family.make_batch(family.rows.columns, torch.device("cpu"))
    logged = family.train_step(batch, 0, contextlib.nullcontext)  # scored before the weights move
    copy_last = torch.nn.functional.mse_loss(batch[:, CONTEXT - 1 : CONTEXT].expand(-1, HORIZON, -1, -1, -1),
                                             batch[:, CONTEXT:])
    assert logged["mse"] == pytest.approx(copy_last.item(), rel=1e-5)  # the loss trains the mean it serves
    model.config.keep_detail = False
    assert not np.array_equal(predict(model, context, 3), video_metrics.copy_last_frame(context, 3))


def test_model_frames_snap_to_levels_and_pass_the_gradient_straight_through():
    levels = TINY["levels"]
    frames = torch.tensor([-0.2, 0.0, 0.07, 0.5, 0.93, 1.0, 1.3])
    snapped = model_frames(frames, levels)
    assert torch.equal(snapped * (levels - 1), (snapped * (levels - 1)).round())  # on the level grid
    assert snapped[0] == 0 and snapped[-1] == 1 and torch.equal(model_frames(snapped, levels), snapped)
    means = frames.clone().requires_grad_(True)
    fed_back = model_frames(means, levels)
    assert torch.equal(fed_back.detach(), snapped)  # the same value as without a gradient
    fed_back.sum().backward()
    assert means.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # the clamp's gradient


# --- training ----------------------------------------------------------------------------


def test_training_steps_are_finite_and_change_the_weights(trained):
    assert trained["result"].finished and trained["result"].step == 6
    assert len(trained["logged"]) == 3
    for metrics in trained["logged"]:
        assert {"loss", "mse", "mse_per_frame", "bits_per_dim"} <= set(metrics)
        assert all(np.isfinite(v) for v in metrics.values())
        assert 0 < metrics["bits_per_dim"] <= np.log2(TINY["levels"]) + 1
    assert not torch.equal(trained["before"], parameters_of(trained["family"].model))


@pytest.mark.parametrize("profile", ["demo", "cpu-long"])  # convlstm-cpu-long is the demo's model; gpu costs a minute
def test_the_cpu_profiles_at_their_widths_train_and_change_every_parameter(profile):
    """A CPU profile's own model (widths, kernels, architecture, decoder, losses) on tiny clips: two
    steps leave no parameter at its initial value."""
    config = VideoRnnConfig.profile(profile, context_frames=CONTEXT, horizon=HORIZON, resolution=SIZE,
                                    head_frames=1, batch_size=2, steps=2)
    family = VideoRnnFamily(config, moving_squares(n=4))
    before = {name: p.detach().clone() for name, p in family.model.named_parameters()}
    for step in range(config.steps):
        batch = family.make_batch(family.rows.columns, torch.device("cpu"))[: config.batch_size]
        logged = family.train_step(batch, step, contextlib.nullcontext)
        assert all(np.isfinite(v) for v in logged.values())
    unchanged = [name for name, p in family.model.named_parameters() if torch.equal(p, before[name])]
    assert not unchanged


def test_checkpoint_loads_weights_only_and_a_resumed_run_is_bit_exact(trained, tmp_path):
    state = torch.load(latest_checkpoint(trained["run"] / "checkpoints"), weights_only=True)
    assert state["step"] == 6 and set(state["modules"]) == {"video_rnn"} and "video_rnn" in state["schedulers"]
    config = tiny_config(steps=6)
    stops = iter([False, False, False, True])
    first = fit(VideoRnnFamily(config, moving_squares()), config.trainer_config(checkpoint_every=100), tmp_path,
                should_stop=lambda: next(stops))
    assert (first.step, first.finished) == (3, False)
    second = fit(VideoRnnFamily(config, moving_squares()), config.trainer_config(checkpoint_every=100), tmp_path)
    assert (second.resumed_from, second.step) == (3, 6)
    resumed = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))["modules"]["video_rnn"]
    for key, tensor in state["modules"]["video_rnn"].items():
        assert torch.equal(tensor, resumed[key]), f"{key} differs after a resume"


def test_clips_are_converted_to_the_configs_channels_and_resolution():
    clips = moving_squares(n=4)
    gray = VideoRnnFamily(tiny_config(), clips)
    assert tuple(gray.rows.columns["frames"].shape) == (4, CLIP, SIZE, SIZE, 1)
    half = VideoRnnFamily(tiny_config(resolution=SIZE // 2, patch=2, channels=3), clips)
    assert tuple(half.rows.columns["frames"].shape) == (4, CLIP, SIZE // 2, SIZE // 2, 3)
    batch = gray.make_batch(gray.rows.columns, torch.device("cpu"))
    assert batch.shape == (4, CONTEXT + HORIZON, 1, SIZE, SIZE) and 0 <= batch.min() and batch.max() <= 1
    with pytest.raises(ValueError):
        VideoRnnFamily(tiny_config(horizon=8), clips)  # 4 + 8 frames > 10


# --- prediction --------------------------------------------------------------------------


def test_predict_modes_shapes_and_seeds(trained):
    model = trained["family"].model
    context = moving_squares(n=2, seed=3)[:, :CONTEXT]
    mean = predict(model, context[0], horizon=HORIZON + 2, mode="mean")  # past the trained horizon
    assert mean.shape == (HORIZON + 2, SIZE, SIZE, 3) and mean.dtype == np.uint8  # the input's channels
    assert np.array_equal(mean, predict(model, context[0], horizon=HORIZON + 2, mode="mean", seed=9))
    gray = predict(model, context[0][..., :1], horizon=2)
    assert gray.shape == (2, SIZE, SIZE, 1)
    a = predict(model, context, horizon=3, mode="sample", seed=1)
    assert a.shape == (2, 3, SIZE, SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, predict(model, context, horizon=3, mode="sample", seed=1))
    assert not np.array_equal(a, predict(model, context, horizon=3, mode="sample", seed=2))
    assert predict(model, context[0], horizon=0).shape == (0, SIZE, SIZE, 3)
    with pytest.raises(ValueError):
        predict(model, context[0], mode="beam")


def test_bundle_reloads_weights_only_to_the_same_predictions(trained):
    bundle = torch.load(trained["bundle"], weights_only=True)
    assert bundle["config"]["hidden"] == [8, 8] and bundle["step"] == 6 and bundle["format"] == BUNDLE_FORMAT
    model = load_model(load_bundle(trained["bundle"]))
    context = moving_squares(n=1, seed=4)[0, :CONTEXT]
    for mode in ("mean", "sample"):
        assert np.array_equal(predict(model, context, 2, mode, seed=5), predict(trained["family"].model, context, 2, mode, seed=5))


def test_a_bundle_of_the_8_bit_format_only_starts_a_run(trained, tmp_path):
    """Format 1 models read 8-bit frames: they are not served as today's model, but their weights
    (same shapes) may start a run."""
    old = torch.load(trained["bundle"], weights_only=True)
    old["format"] = "atelier.video_rnn/1"
    path = tmp_path / "old.pt"
    torch.save(old, path)
    with pytest.raises(ValueError, match="format"):
        load_bundle(path)
    load_model(load_bundle(path, WARM_START_FORMATS))


def test_the_bundle_keeps_held_out_contexts_of_different_sources_and_the_frame_rate(trained):
    """Up to 4 contexts at the model's channels and resolution, the first clip of each source before
    a second clip of any, and the corpus' frame rate."""
    bundle = load_bundle(trained["bundle"])
    assert bundle["fps"] == FPS
    examples = bundle_examples(bundle)
    assert examples.dtype == np.uint8 and examples.shape == (4, CONTEXT, SIZE, SIZE, 1)
    heldout = trained["heldout"]
    first_of_each_source = [0, 2, 4, 5]  # sources a, a, b, b, c, d
    expected = VideoRnnFamily(tiny_config(), heldout[first_of_each_source]).rows.columns["frames"][:, :CONTEXT].numpy()
    assert np.array_equal(examples, expected)  # converted as training converts clips
    two = choose_examples(tiny_config(), heldout[:2], ["a.mp4", "a.mp4"])
    assert two.shape == (2, CONTEXT, SIZE, SIZE, 1)  # fewer clips than 4: all of them
    with pytest.raises(ValueError, match="example contexts"):
        export_bundle(trained["family"], example_contexts=heldout[:2, :CONTEXT])  # RGB, not the model's one channel


def test_a_format_2_bundle_is_served_but_refuses_a_request_without_context(trained, tmp_path):
    """Format 2 is today's model without examples or frame rate: it continues a given context,
    and says what is missing when asked for one of its own."""
    from models.video_rnn.pyfunc import VideoRnnPyfunc

    old = torch.load(trained["bundle"], weights_only=True)
    old["format"] = "atelier.video_rnn/2"
    del old["example_contexts"], old["fps"]
    path = tmp_path / "format2.pt"
    torch.save(old, path)
    pyfunc = VideoRnnPyfunc()
    pyfunc.load_context(type("Context", (), {"artifacts": {"bundle": str(path)}})())
    assert pyfunc.examples is None and pyfunc.fps is None
    context = moving_squares(n=1, seed=4)[0, :CONTEXT]
    assert pyfunc.predict(None, {"context": context, "horizon": 2}).shape == (2, SIZE, SIZE, 3)
    for request in ({"n": 2, "seed": 0}, {"horizon": 2}, {}):
        with pytest.raises(ValueError, match="no example contexts"):
            pyfunc.predict(None, request)


def test_continue_clips_puts_the_context_first(trained):
    model = trained["family"].model
    context = moving_squares(n=2, seed=3)[:, :CONTEXT]
    both = continue_clips(model, context, horizon=3, mode="sample", seed=2, with_context=True)
    assert both.shape == (2, CONTEXT + 3, SIZE, SIZE, 3)
    assert np.array_equal(both[:, :CONTEXT], context)  # at the model's resolution already: unchanged
    assert np.array_equal(both[:, CONTEXT:], predict(model, context, horizon=3, mode="sample", seed=2))
    one = continue_clips(model, context[0, ..., :1], horizon=2, with_context=True)
    assert one.shape == (CONTEXT + 2, SIZE, SIZE, 1) and np.array_equal(one[:CONTEXT], context[0, ..., :1])


# --- metrics and gallery -----------------------------------------------------------------


def test_copy_last_frame_is_perfect_on_a_static_clip():
    still = np.repeat(moving_squares(n=1)[:, :1], CLIP, axis=1)
    baseline = video_metrics.copy_last_frame(still[:, :CONTEXT], HORIZON)
    scores = video_metrics.per_step_scores(still[:, CONTEXT : CONTEXT + HORIZON], baseline)
    assert scores["mse"] == [0.0] * HORIZON
    assert scores["ssim"] == pytest.approx([1.0] * HORIZON)
    assert scores["psnr"] == [video_metrics.PSNR_CAP_DB] * HORIZON
    noisy = video_metrics.frame_scores(still[0, 0], 255 - still[0, 0])
    assert noisy["mse"] > 100 and noisy["ssim"] < 0.5 and 0 < noisy["psnr"] < 10


def test_mse_is_openstls_formula_per_horizon():
    """By hand: truth 0, two clips, two horizons, 2x2 one-channel frames. Horizon 1: clip errors
    summed over the frame are 0.25 and 0.5, mean 0.375; horizon 2: 0.04 and 0, mean 0.02."""
    truth = np.zeros((2, 2, 2, 2, 1))
    prediction = np.zeros_like(truth)
    prediction[0, 0, 0, 0] = 0.5
    prediction[1, 0, 0, :] = 0.5
    prediction[0, 1] = 0.1
    by_horizon = video_metrics.mse_by_horizon(truth, prediction)
    assert by_horizon == pytest.approx([0.375, 0.02])

    def openstl_mse(pred, true):  # openstl/core/metrics.py MSE, spatial_norm off, on (B, T, C, H, W)
        return np.mean((pred - true) ** 2, axis=(0, 1)).sum()

    channels_first = (0, 1, 4, 2, 3)
    pred, true = prediction.transpose(channels_first), truth.transpose(channels_first)
    assert [openstl_mse(pred[:, t : t + 1], true[:, t : t + 1]) for t in range(2)] == pytest.approx(by_horizon)
    assert openstl_mse(pred, true) == pytest.approx(by_horizon.mean())  # OpenSTL's pooled number


def test_psnr_follows_openstl_and_ssim_uses_the_true_data_range():
    rng = np.random.default_rng(0)
    truth = rng.random((16, 16, 1))
    prediction = np.clip(truth + rng.normal(0, 0.1, truth.shape), 0, 1)
    mse = np.mean((prediction.astype(np.float32) - truth.astype(np.float32)) ** 2)
    assert video_metrics.frame_psnr(truth, prediction) == pytest.approx(20 * np.log10(1 / np.sqrt(mse)), abs=1e-4)
    assert video_metrics.frame_psnr(truth, truth) == video_metrics.PSNR_CAP_DB  # OpenSTL: infinity
    from skimage.metrics import structural_similarity
    expected = structural_similarity(prediction[..., 0], truth[..., 0], data_range=1.0)
    assert video_metrics.frame_ssim(truth, prediction) == pytest.approx(expected)
    # OpenSTL's old scikit-image assumed a range of 2 for float frames, which lifts the score
    assert structural_similarity(prediction[..., 0], truth[..., 0], data_range=2.0) > expected


def test_a_blur_that_beats_copy_last_on_mse_scores_worse_than_copy_last():
    """A static texture brightening each frame: copy-last keeps its structure (high SSIM) but
    misses the brightness; the mean of the truth and flat grey has lower MSE and lower SSIM.
    The score sees the blur; lowest MSE would have picked it."""
    rng = np.random.default_rng(0)
    size, context, horizon = 32, 2, 3
    texture = np.where(rng.random((size, size, 1)) < 0.5, 0.2, 0.6)
    clip = np.stack([texture + 0.1 * max(t - (context - 1), 0) for t in range(context + horizon)])
    clip = np.rint(clip * 255).astype(np.uint8)[None]
    truth = clip[:, context:]
    copy_last = video_metrics.per_step_scores(truth, video_metrics.copy_last_frame(clip[:, :context], horizon))
    blurred = video_metrics.per_step_scores(truth, np.rint((truth + 127.5) / 2).astype(np.uint8))
    assert all(b < c for b, c in zip(blurred["mse"], copy_last["mse"]))
    assert all(b < c for b, c in zip(blurred["ssim"], copy_last["ssim"]))
    assert np.mean(video_metrics.score_by_horizon(blurred, copy_last)) > 1
    assert video_metrics.score_by_horizon(copy_last, copy_last) == [1.0] * horizon


def test_the_score_halves_mse_and_doubles_one_minus_ssim_to_1_25():
    baseline = {"mse": [2.0, 0.0], "ssim": [0.9, 1.0]}
    half_mse_double_error = {"mse": [1.0, 0.0], "ssim": [0.8, 1.0]}
    assert video_metrics.score_by_horizon(half_mse_double_error, baseline) == pytest.approx([1.25, 1.0])
    worse_than_perfect = {"mse": [1.0, 0.5], "ssim": [0.8, 1.0]}
    assert video_metrics.score_by_horizon(worse_than_perfect, baseline)[1] == np.inf  # copy-last was perfect there


def test_the_champion_rule_reads_the_score_and_guards_ssim():
    champion = {"score_vs_copy_last": 1.1, "heldout_ssim": 0.60}
    assert CHAMPION_RULE.judge({"score_vs_copy_last": 1.0, "heldout_ssim": 0.585}, champion)[0]
    assert not CHAMPION_RULE.judge({"score_vs_copy_last": 1.0, "heldout_ssim": 0.57}, champion)[0]  # SSIM fell 0.03
    assert not CHAMPION_RULE.judge({"score_vs_copy_last": 1.2, "heldout_ssim": 0.70}, champion)[0]
    assert CHAMPION_RULE.judge({"score_vs_copy_last": 1.2, "heldout_ssim": 0.5}, None)[0]  # the first version


def test_report_has_model_and_baseline_per_horizon(trained):
    model = trained["family"].model
    heldout = moving_squares(n=3, seed=7)
    report = video_metrics.evaluate(model, heldout)
    assert report["horizons"] == [1, 2, 3, 4] and report["clips"] == 3
    for who in ("model", "baseline"):
        assert all(len(report[who][name]) == HORIZON for name in ("mse", "ssim", "psnr"))
        assert all(np.isfinite(v) for values in report[who].values() for v in values)
    assert 0 < report["bits_per_dim"] < np.log2(TINY["levels"]) + 1
    assert report["bits_per_dim"] == pytest.approx(bits_per_dim(model, heldout))
    expected = [h for h, a, b in zip(report["horizons"], report["model"]["mse"], report["baseline"]["mse"]) if a < b]
    assert report["mse_below_baseline_at"] == expected
    scores = video_metrics.score_by_horizon(report["model"], report["baseline"])
    assert report["score_by_horizon"] == scores and report["score_vs_copy_last"] == pytest.approx(np.mean(scores))
    assert report["beats_baseline_at"] == [h for h, score in zip(report["horizons"], scores) if score < 1]
    table = video_metrics.format_table(report)
    assert "copy-last" in table and table.count("\n| ") == HORIZON + 2  # header, steps, mean
    assert "| score |" in table and f"{report['score_vs_copy_last']:.3f} |" in table
    png = gallery.error_plot_png(report)
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size[0] > 100


def test_side_by_side_and_gif(tmp_path):
    clip = moving_squares(n=1)[0]
    frames = gallery.side_by_side(clip[:CONTEXT], clip[CONTEXT:], clip[CONTEXT:, :, :, :1])
    gap = gallery.GAP_PIXELS
    assert frames.shape == (CLIP, SIZE, 3 * SIZE + 2 * gap, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[0, :, SIZE + gap : 2 * SIZE + gap], clip[0])  # context shown in every panel
    assert np.array_equal(frames[CONTEXT, :, :SIZE], clip[CONTEXT - 1])  # the left panel holds the last context frame
    data = gallery.write_gif(None, frames, fps=10)
    assert data.startswith(b"GIF89a")
    gif = Image.open(io.BytesIO(data))
    assert gif.n_frames == CLIP and gif.info["duration"] == 100
    assert gallery.write_gif(tmp_path / "clip.gif", frames, fps=10) is None
    assert (tmp_path / "clip.gif").read_bytes() == data


def test_load_clips_reads_a_video_manifest(tmp_path):
    from corpora.ingest import IngestSettings, ingest
    from corpora.video import VIDEO, VideoCorpusConfig, write_video

    for i, clip in enumerate(moving_squares(n=3, frames=20, seed=5)):
        write_video(tmp_path / "raw" / f"clip_{i}.mp4", clip, fps=10)
    report = ingest(VIDEO, VideoCorpusConfig(resolution=SIZE, clip_frames=CLIP, clip_hop_frames=CLIP), tmp_path / "raw",
                    tmp_path / "out", IngestSettings(workers=1, heldout_percent=50))
    data = load_clips(report.manifest_path)
    assert len(data["train"]) + len(data["heldout"]) == 6
    assert data["train"].shape[1:] == (CLIP, SIZE, SIZE, 3) and data["train"].dtype == np.uint8
    assert len(data["train_sources"]) == len(data["train"]) and all(s.endswith(".mp4") for s in data["train_sources"])


def test_the_frame_rate_comes_from_the_manifests_ingest_config(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"config": {"fps": 12.5, "resolution": 64}}')
    assert manifest_fps(manifest) == 12.5
    manifest.write_text('{"config": {"resolution": 64}}')
    with pytest.raises(ValueError, match="frame rate"):
        manifest_fps(manifest)


# --- the registered model ----------------------------------------------------------------

FRESH_PREDICT = """
    import numpy as np
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(sys.argv[1])
    context = np.load(sys.argv[2])
    by_dict = model.predict({"context": context, "horizon": 3, "mode": "sample", "seed": 4})
    by_frame = model.predict(pd.DataFrame({"context": [context], "horizon": [3], "mode": ["sample"], "seed": [4]}))
    by_lists = model.predict({"context": context.tolist(), "horizon": [3], "mode": "mean"})
    default = model.predict({"context": context[..., :1]})
    shown = model.predict({"context": context, "horizon": 2, "with_context": True})
    examples = model.predict({"n": 6, "seed": 0})  # no context: the bundle's held-out contexts, cycled
    everyone = model.predict({"seed": 0})
    by_frame_n = model.predict(pd.DataFrame({"n": [2], "seed": [0]}))
    drawn = model.predict({"n": 2, "seed": 1, "mode": "sample", "horizon": 2, "with_context": True})
    np.savez(sys.argv[3], examples=examples, drawn=drawn, shown=shown)
    module = sys.modules[type(model.unwrap_python_model()).__module__].__file__
    print(json.dumps({"shape": list(by_dict.shape), "dtype": str(by_dict.dtype), "same": bool((by_dict == by_frame).all()),
                      "lists_shape": list(by_lists.shape), "default_shape": list(default.shape),
                      "everyone_shape": list(everyone.shape), "frame_n_same": bool((by_frame_n == examples[:2]).all()),
                      "module": module}))
"""


def test_pyfunc_predicts_in_a_fresh_process_with_only_models_on_the_path(trained, tmp_path):
    import mlflow.pyfunc

    from models.video_rnn.pyfunc import VideoRnnPyfunc

    model_dir = tmp_path / "model"
    mlflow.pyfunc.save_model(str(model_dir), python_model=VideoRnnPyfunc(), artifacts={"bundle": str(trained["bundle"])},
                             code_paths=FAMILY.code_paths())
    context = tmp_path / "context.npy"
    clip = moving_squares(n=1, seed=6)[0, :CONTEXT]
    np.save(context, clip)
    outputs = tmp_path / "outputs.npz"
    result = run_in_fresh_process(FRESH_PREDICT, model_dir, str(context), str(outputs), OMP_NUM_THREADS="1")
    assert result == {**result, "shape": [3, SIZE, SIZE, 3], "dtype": "uint8", "same": True,
                      "lists_shape": [3, SIZE, SIZE, 3], "default_shape": [HORIZON, SIZE, SIZE, 1],
                      "everyone_shape": [4, HORIZON, SIZE, SIZE, 1], "frame_n_same": True}
    assert result["module"].startswith(str(model_dir)), "the pyfunc must come from the model's own code path"

    saved = np.load(outputs)
    model = trained["family"].model
    stored = bundle_examples(load_bundle(trained["bundle"]))
    examples = saved["examples"]  # (6, K, H, W, C) at the model's one channel: 4 examples, then the first two again
    assert examples.shape == (6, HORIZON, SIZE, SIZE, 1) and examples.dtype == np.uint8
    assert np.array_equal(examples[:4], predict(model, stored, mode="mean")) and np.array_equal(examples[4:], examples[:2])
    drawn = saved["drawn"]  # the context first, then frames drawn pixel by pixel
    assert drawn.shape == (2, CONTEXT + 2, SIZE, SIZE, 1) and np.array_equal(drawn[:, :CONTEXT], stored[:2])
    assert np.array_equal(drawn[:, CONTEXT:], predict(model, stored[:2], horizon=2, mode="sample", seed=1))
    shown = saved["shown"]
    assert shown.shape == (CONTEXT + 2, SIZE, SIZE, 3) and np.array_equal(shown[:CONTEXT], clip)


def test_pyfunc_rejects_bad_requests(trained):
    from models.video_rnn.pyfunc import VideoRnnPyfunc

    pyfunc = VideoRnnPyfunc()
    pyfunc.model = load_model(trained["bundle"])
    pyfunc.examples = None  # a bundle without example contexts needs a context
    context = moving_squares(n=1)[0, :CONTEXT]
    for request in ({"horizon": 2}, {"context": context, "mode": "beam"}, {"context": context.astype(float) * 2},
                    {"context": context, "horizon": 10_000}, {"context": context[0, 0]}):
        with pytest.raises((ValueError, TypeError)):
            pyfunc.predict(None, request)
    pyfunc.examples = bundle_examples(load_bundle(trained["bundle"]))
    for request in ({"n": 0}, {"n": 10_000}, {"n": 2, "mode": "beam"}, {"n": 2, "horizon": 10_000},
                    {"n": 2, "with_context": "yes"}, {"context": context, "with_context": 2}):
        with pytest.raises(ValueError):
            pyfunc.predict(None, request)


def test_gallery_clips_are_distinct_and_take_each_kind_of_footage_in_turn():
    sources = [f"moving_digits/d{i // 2}.mp4" for i in range(10)] + ["real/bikes.mp4", "real/bikes.mp4"]
    chosen = gallery_clips(sources, 4, seed=0)
    assert len(chosen) == len(set(chosen)) == 4
    assert len({sources[i] for i in chosen}) == 4  # one clip per file while there are files left
    assert [video_metrics.source_kind(sources[i]) for i in chosen[:2]] == ["moving_digits", "real"]
    assert sorted(gallery_clips(sources, 100, seed=0)) == list(range(12))  # every clip once, none twice
    assert gallery_clips(sources, 4, seed=0) == chosen and gallery_clips(sources, 4, seed=1) != chosen
