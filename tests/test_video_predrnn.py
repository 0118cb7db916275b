"""The PredRNN-V2 recurrence of the video family: shapes, the zigzag flow of its spatiotemporal
memory, the decoupling term, reverse scheduled sampling, training, resume and the pyfunc."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.bundle import save_bundle
from models.trainer import fit, latest_checkpoint, load_checkpoint
from models.video_rnn import FAMILY
from models.video_rnn.config import VideoRnnConfig
from models.video_rnn.metrics import frame_ssim, ssim_torch
from models.video_rnn.network import VideoRnn
from models.video_rnn.predrnn import PredRnnStack, SpatioTemporalLSTMCell, decoupling_cosine
from models.video_rnn.sampling import load_model, predict
from models.video_rnn.training import VideoRnnFamily, export_bundle, true_context_probability
from tests.fresh_process import run_in_fresh_process
from tests.test_video_rnn import CONTEXT, HORIZON, SIZE, moving_squares, tiny_config


PREDRNN = dict(architecture="predrnn_v2", decoder="resize", decoder_channels=4, true_context_start=0.5,
               true_context_ramp=(0.25, 0.75), ssim_weight=1.0, steps=4)


def predrnn_config(**overrides) -> VideoRnnConfig:
    return tiny_config(**{**PREDRNN, **overrides})


def stack_and_input(layers: int = 3, seed: int = 0) -> tuple[PredRnnStack, torch.Tensor]:
    torch.manual_seed(seed)
    return PredRnnStack(3, (5,) * layers, kernel=3).eval(), torch.randn(2, 3, 6, 6)


def test_cell_and_stack_shapes():
    torch.manual_seed(0)
    cell = SpatioTemporalLSTMCell(in_channels=3, hidden=5, kernel=3)
    zeros = torch.zeros(2, 5, 6, 6)
    h, c, m, (temporal, spatiotemporal) = cell(torch.randn(2, 3, 6, 6), (zeros, zeros), zeros)
    assert h.shape == c.shape == m.shape == temporal.shape == spatiotemporal.shape == (2, 5, 6, 6)
    stack, x = stack_and_input()
    top, state = stack.step(x)
    assert top.shape == (2, 5, 6, 6) and len(state.layers) == 3 and state.memory.shape == (2, 5, 6, 6)
    assert state.steps == 1 and state.decoupling == 0  # the term is computed only in training
    with pytest.raises(ValueError):
        PredRnnStack(3, (5, 4), kernel=3)  # M passes between layers: one width
    model = VideoRnn(predrnn_config()).eval()
    frames = torch.rand(2, CONTEXT, 1, SIZE, SIZE)
    means, features, _ = model.read(frames)
    assert means.shape == frames.shape and features.shape == (2, CONTEXT, 8, SIZE // 4, SIZE // 4)
    assert predict(model, moving_squares(n=2)[:, :CONTEXT], horizon=3).shape == (2, 3, SIZE, SIZE, 3)


def test_the_spatiotemporal_memory_zigzags_bottom_to_top_then_to_the_next_bottom():
    """As the paper gives it: within a step M goes up the layers; the bottom layer at t reads the
    top layer's M of t-1; the bottom layer's output at t depends on no layer above it at t."""
    stack, x = stack_and_input()
    with torch.no_grad():
        _, state = stack.step(torch.randn_like(x))
        _, after = stack.step(x, state)

        def bottom_and_top(changed):
            _, new = stack.step(x, changed)
            return new.layers[0][0], new.layers[-1][0]

        other_memory = state._replace(memory=state.memory + 1.0)  # the top layer's M at t-1
        bottom, top = bottom_and_top(other_memory)
        assert not torch.allclose(bottom, after.layers[0][0]) and not torch.allclose(top, after.layers[-1][0])
        upper_changed = [state.layers[0]] + [(h + 1.0, c + 1.0) for h, c in state.layers[1:]]
        bottom, top = bottom_and_top(state._replace(layers=upper_changed))  # layers above the bottom at t-1
        assert torch.equal(bottom, after.layers[0][0]) and not torch.allclose(top, after.layers[-1][0])
        below_changed = [(h + 1.0, c + 1.0) for h, c in state.layers[:1]] + state.layers[1:]
        _, new = stack.step(x, state._replace(layers=below_changed))
        assert all(not torch.allclose(a[0], b[0]) for a, b in zip(new.layers, after.layers))  # M carries it up

    # within a step, the bottom layer's output uses no weight of the layers above it (the state of
    # t-1 is held fixed: through M of t-1 it depends on them, as it should)
    _, new = stack.step(x, state)
    grads = torch.autograd.grad(new.layers[0][0].sum(), list(stack.cells[1:].parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    top_grads = torch.autograd.grad(new.layers[-1][0].sum(), list(stack.cells[0].parameters()), allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in top_grads)


def test_the_decoupling_term_is_the_absolute_cosine_of_the_increments():
    a = torch.randn(2, 4, 5, 5)
    assert decoupling_cosine(a, a).item() == pytest.approx(1.0)
    assert decoupling_cosine(a, -a).item() == pytest.approx(1.0)
    b = torch.zeros_like(a)
    b[..., 0, 0], a[..., 0, 1:] = 1.0, 0.0  # disjoint supports: orthogonal
    a[..., 0, 0] = 0.0
    assert decoupling_cosine(a, b).item() == pytest.approx(0.0, abs=1e-6)
    stack, x = stack_and_input()
    stack.train()
    _, state = stack.step(x)
    _, state = stack.step(x, state)
    assert state.steps == 2 and 0 < state.decoupling.item() <= 2.0  # a sum of per-step means of |cos| <= 1


def test_reverse_scheduled_sampling_probability_rises_from_the_start_to_one():
    config = predrnn_config(steps=1000, true_context_start=0.5, true_context_ramp=(0.2, 0.6))
    probabilities = [true_context_probability(step, config) for step in range(0, 1001, 10)]
    assert probabilities[0] == probabilities[19] == 0.5  # before the ramp (step 200)
    assert all(a <= b for a, b in zip(probabilities, probabilities[1:]))
    assert true_context_probability(400, config) == pytest.approx(1 - 0.5 * math.exp(-2.5))  # half way: e^-(5/2)
    assert true_context_probability(600, config) == true_context_probability(1000, config) == 1.0
    assert all(true_context_probability(s, tiny_config(steps=1000)) == 1.0 for s in (0, 500))  # off by default


def test_a_context_frame_not_kept_is_the_models_own_prediction():
    """read with no true frame kept after the first equals feeding back the means (roll)."""
    torch.manual_seed(0)
    model = VideoRnn(predrnn_config()).eval()
    frames = torch.rand(2, 5, 1, SIZE, SIZE)
    with torch.no_grad():
        replaced, _, _ = model.read(frames, keep_true=torch.zeros(2, 5, dtype=torch.bool))
        first, _, state = model.read(frames[:, :1])
        rolled, _ = model.roll(first[:, 0], state, 4)
        kept, _, _ = model.read(frames, keep_true=torch.ones(2, 5, dtype=torch.bool))
    assert torch.allclose(replaced, torch.cat([first, rolled], dim=1), atol=1e-6)
    assert torch.equal(kept, model.read(frames)[0])


def test_the_ssim_loss_is_the_metrics_ssim():
    torch.manual_seed(0)
    truth = torch.rand(3, 1, 20, 20)
    prediction = (truth + 0.2 * torch.randn_like(truth)).clamp(0, 1)
    expected = np.mean([frame_ssim(t.permute(1, 2, 0).double().numpy(), p.permute(1, 2, 0).double().numpy())
                        for t, p in zip(truth, prediction)])
    assert ssim_torch(truth, prediction).item() == pytest.approx(expected, abs=1e-5)


@pytest.fixture(scope="module")
def trained_predrnn(tmp_path_factory):
    run = tmp_path_factory.mktemp("predrnn")
    config = predrnn_config()
    family = VideoRnnFamily(config, moving_squares())
    before = {name: p.detach().clone() for name, p in family.model.named_parameters()}
    logged = []
    result = fit(family, config.trainer_config(log_every=1, checkpoint_every=2), run, log=lambda s, m: logged.append(m))
    bundle = save_bundle(export_bundle(family, result.step, example_contexts=moving_squares(n=2)[:, :CONTEXT, ..., :1]),
                         run / "bundle.pt")
    return {"family": family, "before": before, "logged": logged, "run": run, "bundle": bundle}


def test_training_changes_every_parameter(trained_predrnn):
    model = trained_predrnn["family"].model
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, trained_predrnn["before"][name])]
    assert not unchanged
    assert any(name.startswith("stack.decouple") for name in trained_predrnn["before"])  # the decoupling's own conv
    for metrics in trained_predrnn["logged"]:
        assert all(np.isfinite(v) for v in metrics.values())
        assert 0 < metrics["decoupling"] <= 1 and 0 < metrics["true_context_probability"] <= 1
    assert trained_predrnn["logged"][0]["true_context_probability"] == 0.5


def test_a_resumed_predrnn_run_is_bit_exact(trained_predrnn, tmp_path):
    state = torch.load(latest_checkpoint(trained_predrnn["run"] / "checkpoints"), weights_only=True)
    config = predrnn_config()
    stops = iter([False, False, True])
    first = fit(VideoRnnFamily(config, moving_squares()), config.trainer_config(checkpoint_every=100), tmp_path,
                should_stop=lambda: next(stops))
    assert (first.step, first.finished) == (2, False)
    second = fit(VideoRnnFamily(config, moving_squares()), config.trainer_config(checkpoint_every=100), tmp_path)
    assert (second.resumed_from, second.step) == (2, PREDRNN["steps"])
    resumed = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))["modules"]["video_rnn"]
    for key, tensor in state["modules"]["video_rnn"].items():
        assert torch.equal(tensor, resumed[key]), f"{key} differs after a resume"


FRESH_PREDICT = """
    import numpy as np
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(sys.argv[1])
    context = np.load(sys.argv[2])
    np.savez(sys.argv[3], mean=model.predict({"context": context, "horizon": 3}),
             sample=model.predict({"context": context, "horizon": 2, "mode": "sample", "seed": 3}))
    print(json.dumps({"module": sys.modules[type(model.unwrap_python_model()).__module__].__file__}))
"""


def test_the_pyfunc_serves_a_predrnn_bundle_in_a_fresh_process(trained_predrnn, tmp_path):
    import mlflow.pyfunc

    from models.video_rnn.pyfunc import VideoRnnPyfunc

    model_dir = tmp_path / "model"
    mlflow.pyfunc.save_model(str(model_dir), python_model=VideoRnnPyfunc(),
                             artifacts={"bundle": str(trained_predrnn["bundle"])}, code_paths=FAMILY.code_paths())
    context = moving_squares(n=1, seed=6)[0, :CONTEXT]
    np.save(tmp_path / "context.npy", context)
    result = run_in_fresh_process(FRESH_PREDICT, model_dir, str(tmp_path / "context.npy"), str(tmp_path / "out.npz"),
                                  OMP_NUM_THREADS="1")
    assert result["module"].startswith(str(model_dir))
    saved = np.load(tmp_path / "out.npz")
    model = load_model(trained_predrnn["bundle"])
    assert model.config.architecture == "predrnn_v2"
    assert np.array_equal(saved["mean"], predict(model, context, horizon=3))
    assert np.array_equal(saved["sample"], predict(model, context, horizon=2, mode="sample", seed=3))
    assert saved["mean"].shape == (3, SIZE, SIZE, 3)
