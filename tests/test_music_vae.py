"""The music VAE family: tokens <-> MIDI, training steps, sampling, the pyfunc, rendering, metrics."""
from __future__ import annotations

import io
from contextlib import nullcontext

import numpy as np
import pretty_midi
import pytest
import torch

from corpora import midi as corpus_midi
from corpora.shards import png_bytes
from models import midi_audio
from models.bundle import save_bundle
from models.music_vae import CHAMPION_RULE, FAMILY
from models.music_vae import metrics as music_metrics
from models.music_vae import render as music_render
from models.music_vae.config import MusicVaeConfig
from models.music_vae.network import (
    START, consecutive_note_ons, hidden_note_ons, next_sounding, pick_tokens, shift_right, token_probabilities,
)
from models.music_vae.sampling import (
    GALLERY_BARS, GALLERY_FORBIDS_CONSECUTIVES, GALLERY_TEMPERATURE, LATENT_WALK_CORRELATION, RHYTHM_TEMPERATURE, encode,
    interpolate, latent_walk, load_bundle, load_model, sample,
)
from models.music_vae.tokens import HOLD, NOTE_OFF, midi_bytes_to_tokens, step_seconds, tokens_to_midi_bytes, tokens_to_notes
from models.music_vae.training import MusicVaeFamily, export_bundle, transpose
from models.trainer import fit
from tests.fresh_process import run_in_fresh_process

STEPS = 32


def random_voice(rng: np.random.Generator, low: int = 55, high: int = 80, steps: int = STEPS) -> np.ndarray:
    """Canonical tokens of random monophonic notes and rests, made the way the corpus makes them."""
    pitch, onset, duration, t = [], [], [], int(rng.integers(0, 3))
    while t < steps:
        length = int(rng.integers(1, 6))
        if rng.random() < 0.8:
            pitch.append(int(rng.integers(low, high))), onset.append(t), duration.append(length)
        t += length + int(rng.random() < 0.2)
    return corpus_midi.melody_tokens(pitch, onset, duration, steps)


def windows(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "melody":
        return np.stack([random_voice(rng) for _ in range(n)])
    ranges = [(67, 80), (60, 72), (52, 65), (40, 55)]
    return np.stack([np.stack([random_voice(rng, lo, hi) for lo, hi in ranges]) for _ in range(n)])


def tiny_config(kind: str, **overrides) -> MusicVaeConfig:
    values = dict(kind=kind, embed_dim=8, encoder_hidden=16, decoder_hidden=16, decoder_layers=1, latent_dim=4,
                  batch_size=8, steps=3, sampling_rate=2.0, beta_rate=0.0, max_beta=0.5, free_bits=0.0)
    values.update(overrides)
    return MusicVaeConfig(**values)


# --- tokens <-> MIDI ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["melody", "chorale"])
def test_tokens_to_midi_bytes_round_trip(kind):
    dt = step_seconds()
    for window in windows(kind, 6, seed=1):
        parsed = pretty_midi.PrettyMIDI(io.BytesIO(tokens_to_midi_bytes(window)))
        voices = np.atleast_2d(window)
        assert len(parsed.instruments) == len(voices)  # one instrument per voice
        for voice, instrument in zip(voices, parsed.instruments):
            expected = corpus_midi.tokens_to_notes(voice)  # the corpus's semantics
            assert tokens_to_notes(voice) == expected
            got = [(n.pitch, round(n.start / dt), round((n.end - n.start) / dt)) for n in instrument.notes]
            assert got == expected
        assert np.array_equal(midi_bytes_to_tokens(tokens_to_midi_bytes(window), len(voices)).squeeze(), window)


def test_transposition_moves_pitches_only_and_stays_in_range():
    base = torch.tensor([[[0, HOLD, 5, NOTE_OFF, HOLD, 127]], [[60, HOLD, NOTE_OFF, 62, HOLD, HOLD]],
                         [[HOLD] * 6]])
    torch.manual_seed(0)
    for _ in range(50):
        moved = transpose(base.clone(), 5)
        specials = base >= NOTE_OFF
        assert torch.equal(moved[specials], base[specials])
        assert moved[~specials].min() >= 0 and moved[~specials].max() <= 127
        assert torch.equal(moved[0], base[0])  # 0..127 already used: no room to move
        shift = moved[1, 0, 0] - 60
        assert -5 <= shift <= 5 and moved[1, 0, 3] - 62 == shift  # one shift per window
    shifts = {int(transpose(base.clone(), 5)[1, 0, 0]) - 60 for _ in range(200)}
    assert shifts == set(range(-5, 6))


# --- training ----------------------------------------------------------------------------


def test_training_batches_keep_the_corpus_keys_unless_asked_to_transpose():
    """The default trains on the corpus's own keys (docs/music-vae.md); a range moves whole windows."""
    tokens = windows("chorale", 64, seed=4)
    columns = {"voices": torch.as_tensor(tokens)}
    default = MusicVaeFamily(tiny_config("chorale"), tokens).make_batch(columns, torch.device("cpu"))
    assert torch.equal(default, torch.as_tensor(tokens).long())
    torch.manual_seed(0)
    moved = MusicVaeFamily(tiny_config("chorale", transpose_range=5), tokens).make_batch(columns, torch.device("cpu"))
    assert not torch.equal(moved, default)
    assert torch.equal(moved >= NOTE_OFF, default >= NOTE_OFF)  # only pitches move


@pytest.mark.parametrize("kind", ["melody", "chorale"])
def test_a_few_training_steps_are_finite_and_change_the_weights(tmp_path, kind):
    config = tiny_config(kind)
    family = MusicVaeFamily(config, windows(kind, 24))
    before = {k: v.clone() for k, v in family.model.state_dict().items()}
    logged = []
    result = fit(family, config.trainer_config(log_every=1), tmp_path / "run", log=lambda s, m: logged.append(m))
    assert result.finished and len(logged) == config.steps
    assert all(np.isfinite(list(m.values())).all() for m in logged)
    changed = [k for k, v in family.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("decoder.") for k in changed)


def test_a_run_resumes_from_its_weights_only_checkpoint(tmp_path):
    data = windows("melody", 16)
    config = tiny_config("melody", steps=4)
    fit(MusicVaeFamily(config, data), config.trainer_config(steps=2), tmp_path / "run")
    resumed = MusicVaeFamily(config, data)
    result = fit(resumed, config.trainer_config(), tmp_path / "run")
    assert result.resumed_from == 2 and result.finished
    straight = MusicVaeFamily(config, data)
    fit(straight, config.trainer_config(), tmp_path / "straight")
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_free_bits_remove_the_kl_term_below_the_budget_and_beta_scales_it_above():
    batch = torch.as_tensor(windows("chorale", 8).astype(np.int64))
    tokens_per_window = 4 * STEPS

    def step_loss(**overrides):
        family = MusicVaeFamily(tiny_config("chorale", sampling_rate=0.0, **overrides), windows("chorale", 8))
        torch.manual_seed(0)
        metrics = family.train_step(batch, step=10, autocast=nullcontext)
        return metrics["loss"], metrics["recon_nats_per_token"] * tokens_per_window, metrics["kl_bits"]

    loss, recon, kl_bits = step_loss(free_bits=1e6)  # every KL is under the budget
    assert loss == pytest.approx(recon, rel=1e-5) and kl_bits > 0
    loss, recon, kl_bits = step_loss(free_bits=0.0, max_beta=0.5)
    assert loss == pytest.approx(recon + 0.5 * kl_bits * np.log(2), rel=1e-4)


def test_scheduled_sampling_changes_the_decoder_input():
    model = MusicVaeFamily(tiny_config("chorale"), windows("chorale", 8)).model
    targets = torch.as_tensor(windows("chorale", 8).astype(np.int64))
    z = torch.randn(8, 4)
    _, fed = model.decode_scheduled(z, targets, probability=0.0)
    assert torch.equal(fed, shift_right(targets))
    logits_tf = model.decode_teacher_forced(z, targets)
    logits_steps, fed = model.decode_scheduled(z, targets, probability=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fed[:, 0], torch.full_like(fed[:, 0], START))
    assert not torch.equal(fed[:, 1:], shift_right(targets)[:, 1:])
    assert torch.allclose(logits_tf[:, 0], logits_steps[:, 0], atol=1e-5)  # same first step, one pass vs stepwise


def test_each_voice_is_drawn_given_the_voices_above_it_in_its_step():
    model = MusicVaeFamily(tiny_config("chorale"), windows("chorale", 8)).model.eval()
    heads = model.decoder.heads
    y = torch.randn(3, 5, model.config.decoder_hidden)
    current = torch.as_tensor(windows("chorale", 3, seed=2)[:, :, :5].transpose(0, 2, 1).astype(np.int64))  # (B, S, V)

    def with_voice(voice: int) -> torch.Tensor:
        changed = current.clone()
        changed[..., voice] = torch.where(changed[..., voice] == 60, 61, 60)
        return changed

    with torch.no_grad():
        base = heads(y, current)
        soprano, tenor, bass = heads(y, with_voice(0)), heads(y, with_voice(2)), heads(y, with_voice(3))
    assert torch.equal(soprano[..., 0, :], base[..., 0, :])  # the soprano comes first: it sees none of its step
    assert not torch.allclose(soprano[..., 1, :], base[..., 1, :])  # the alto depends on the soprano ...
    assert torch.equal(tenor[..., 1, :], base[..., 1, :]) and torch.equal(bass[..., 1, :], base[..., 1, :])  # ... only
    assert not torch.allclose(tenor[..., 3, :], base[..., 3, :])  # the bass hears the tenor
    # greedy decoding picked each voice given the voices already picked in its step: teacher-forced on its
    # own output, the decoder picks the same tokens again (not so if a voice had been drawn before the ones above it)
    z = torch.randn(6, model.config.latent_dim)
    drawn = model.generate(z, temperature=0.0)
    assert torch.equal(model.decode_teacher_forced(z, drawn).argmax(-1).transpose(1, 2), drawn)


def test_the_rule_masks_exactly_the_note_ons_the_metrics_count_as_consecutive_fifths_or_octaves():
    """Against the evaluation's own counts: for random previous and current sonorities, a note-on
    of the last voice is masked exactly when parallel_motions or contrary_motions would count it."""
    rng = np.random.default_rng(0)
    before = torch.as_tensor(np.where(rng.random((400, 4)) < 0.1, -1, rng.integers(40, 80, (400, 4))))
    moved = before + torch.as_tensor(rng.choice([-12, -7, -5, -2, 0, 2, 5, 7, 12], (400, 4)))
    now = torch.where(torch.as_tensor(rng.random((400, 4)) < 0.1), -1, torch.where(before < 0, -1, moved))
    masked = consecutive_note_ons(before, now, voice=3)

    def faults(row: int, bass: int) -> int:
        after = np.array([*now[row, :3].tolist(), bass])
        return (sum(music_metrics.parallel_motions(before[row].numpy(), after).values())
                + sum(music_metrics.contrary_motions(before[row].numpy(), after).values()))

    counted = 0
    for row in range(len(before)):
        upper_voices_alone = faults(row, -1)  # a silent bass takes part in none
        for pitch in range(30, 90):
            with_bass = faults(row, pitch) - upper_voices_alone
            assert bool(masked[row, pitch]) == (with_bass > 0), (before[row].tolist(), now[row].tolist(), pitch)
            counted += with_bass > 0
    assert counted > 100  # the random sonorities meet the rule often enough to test it
    assert consecutive_note_ons(before, now, voice=0).sum() == 0  # the soprano is drawn first: nothing to keep apart from
    # a held note keeps its pitch, a NOTE_OFF silences, a note-on sounds its own pitch
    tokens = torch.tensor([60, HOLD, NOTE_OFF, HOLD])
    assert next_sounding(torch.tensor([50, 52, 55, -1]), tokens).tolist() == [60, 52, -1, -1]


def test_the_rule_masks_exactly_the_bass_note_ons_the_metrics_count_as_hidden_fifths_or_octaves():
    """Against `hidden_perfects`: for random sonorities, a note-on of the bass is masked exactly
    when it would make hidden fifths or octaves with the soprano (steps and leaps of the soprano
    around the whole step, both directions), and no other voice is masked by it."""
    rng = np.random.default_rng(1)
    before = torch.as_tensor(np.where(rng.random((400, 4)) < 0.1, -1, rng.integers(40, 80, (400, 4))))
    moved = before + torch.as_tensor(rng.choice([-12, -7, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 7, 12], (400, 4)))
    now = torch.where(torch.as_tensor(rng.random((400, 4)) < 0.1), -1, torch.where(before < 0, -1, moved))
    masked = hidden_note_ons(before, now, voice=3)
    counted = 0
    for row in range(len(before)):
        for pitch in range(30, 90):
            hidden = music_metrics.hidden_perfects(before[row].numpy(), np.array([*now[row, :3].tolist(), pitch]))
            assert bool(masked[row, pitch]) == bool(hidden), (before[row].tolist(), now[row].tolist(), pitch)
            counted += hidden
    assert counted > 100
    assert all(hidden_note_ons(before, now, voice).sum() == 0 for voice in range(3))  # the bass's rule alone
    # G4 -> C5 (a leap up) over F3 -> C4: an octave reached by similar motion; by step, or contrary, it is not
    assert music_metrics.hidden_perfects(np.array([67, 53]), np.array([72, 60])) == 1
    assert music_metrics.hidden_perfects(np.array([71, 55]), np.array([72, 60])) == 0
    assert music_metrics.hidden_perfects(np.array([67, 62]), np.array([72, 48])) == 0
    assert music_metrics.hidden_perfects(np.array([67, 60]), np.array([74, 67])) == 0  # a parallel fifth, counted apart


def test_sampling_with_the_rule_draws_no_consecutive_fifths_or_octaves():
    model = MusicVaeFamily(tiny_config("chorale"), windows("chorale", 8)).model.eval()
    free = music_metrics.harmony_statistics(sample(model, 24, seed=0, temperature=1.0, bars=4))
    ruled_windows = sample(model, 24, seed=0, temperature=1.0, bars=4, forbid_consecutives=True)
    ruled = music_metrics.harmony_statistics(ruled_windows)
    # an untrained decoder at temperature 1 moves its voices at random: without the rule it makes both faults
    assert free["parallels_per_bar"] > 0.1 and free["contrary_perfects_per_bar"] > 0.1
    assert free["hidden_perfects_per_bar"] > 0.05
    assert ruled["parallels_per_bar"] == ruled["contrary_perfects_per_bar"] == ruled["hidden_perfects_per_bar"] == 0
    assert np.array_equal(ruled_windows, sample(model, 24, seed=0, temperature=1.0, bars=4, forbid_consecutives=True))


# --- sampling, interpolation, bundles ----------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("music")
    families = []
    for kind in ("chorale", "melody"):
        config = tiny_config(kind, steps=4)
        family = MusicVaeFamily(config, windows(kind, 32))
        fit(family, config.trainer_config(), folder / kind)
        families.append(family)
    bundle = save_bundle(export_bundle(*families, steps={"chorale": 4, "melody": 4}), folder / "bundle.pt")
    return families, bundle


def test_sample_shapes_and_determinism_by_seed(trained):
    (chorale, melody), _ = trained
    a = sample(chorale.model, 5, seed=3, temperature=1.0)
    assert a.shape == (5, 4, STEPS) and a.dtype == np.uint8 and a.max() <= HOLD
    assert np.array_equal(a, sample(chorale.model, 5, seed=3, temperature=1.0))
    assert not np.array_equal(a, sample(chorale.model, 5, seed=4, temperature=1.0))
    assert sample(melody.model, 3, seed=0).shape == (3, STEPS)
    greedy = sample(melody.model, 3, seed=0, temperature=0.0)
    assert np.array_equal(greedy, sample(melody.model, 3, seed=0, temperature=0.0))
    phrases = sample(chorale.model, 2, seed=3, bars=8)  # four windows decoded as one sequence
    assert phrases.shape == (2, 4, 4 * STEPS) and np.array_equal(phrases, sample(chorale.model, 2, seed=3, bars=8))
    assert sample(melody.model, 2, seed=3, bars=4).shape == (2, 2 * STEPS)
    for bars in (3, 1, 16):
        with pytest.raises(ValueError, match="bars"):
            sample(chorale.model, 1, bars=bars)


def test_a_phrases_latents_walk_from_the_prior():
    walk = latent_walk(4000, 4, 8, seed=0)
    assert walk.shape == (4000, 4, 8)
    assert walk.std(dim=(0, 2)).tolist() == pytest.approx([1.0] * 4, abs=0.03)  # every window's latent is N(0, I)
    next_window = (walk[:, 1:] * walk[:, :-1]).mean().item()
    assert next_window == pytest.approx(LATENT_WALK_CORRELATION, abs=0.03)


def test_bundle_reloads_weights_only_to_the_same_music(trained):
    (chorale, melody), path = trained
    bundle = load_bundle(path)
    assert set(bundle["models"]) == {"chorale", "melody"} and bundle["tokens"]["hold"] == HOLD
    assert np.array_equal(sample(load_model(bundle, "chorale"), 4, seed=1), sample(chorale.model, 4, seed=1))
    assert np.array_equal(sample(load_model(bundle, "melody"), 4, seed=1), sample(melody.model, 4, seed=1))
    ends = windows("chorale", 2, seed=5)
    strip = interpolate(chorale.model, ends[0], ends[1], steps=4)
    assert strip.shape == (4, 4, STEPS)
    mu, sigma = encode(chorale.model, ends)
    assert mu.shape == sigma.shape == (2, 4) and (sigma > 0).all()


FRESH_PREDICT = """
    import mlflow.pyfunc
    import pandas as pd
    import pretty_midi

    model = mlflow.pyfunc.load_model(sys.argv[1])
    chorales = model.predict({"n": 3, "seed": 7, "temperature": 0.8})
    plain = model.predict({"n": 2, "seed": 7})
    ruled = model.predict({"n": 2, "seed": 7, "forbid_consecutives": True})
    free = model.predict({"n": 2, "seed": 7, "forbid_consecutives": False})
    try:
        model.predict({"n": 1, "forbid_consecutives": "sometimes"})
        refused = ""
    except ValueError as error:
        refused = str(error)
    default_temperature = model.predict({"n": 2, "seed": 7, "temperature": TEMPERATURE})
    default_rhythm = model.predict({"n": 2, "seed": 7, "rhythm_temperature": OWN_ODDS})
    steadier = model.predict({"n": 2, "seed": 7, "rhythm_temperature": 0.3})
    try:
        model.predict({"n": 1, "rhythm_temperature": 0})
        refused_rhythm = ""
    except ValueError as error:
        refused_rhythm = str(error)
    hotter = model.predict({"n": 2, "seed": 7, "temperature": 1.0})
    long = pretty_midi.PrettyMIDI(io.BytesIO(model.predict({"n": 1, "seed": 7, "bars": 8})[0]))
    again = model.predict(pd.DataFrame({"n": [3], "seed": [7], "temperature": [0.8]}))
    melodies = model.predict({"n": 2, "seed": 1, "mode": "melody"})
    strip = model.predict({"interpolate": [chorales[0], chorales[1]], "steps": 4, "mode": "chorale"})
    parsed = [pretty_midi.PrettyMIDI(io.BytesIO(b)) for b in chorales + melodies + strip]
    module = sys.modules[type(model.unwrap_python_model()).__module__].__file__
    print(json.dumps({"n": len(chorales), "same": chorales == again, "melodies": len(melodies), "strip": len(strip),
                      "plain": [type(b).__name__ for b in plain], "default_temperature": plain == default_temperature,
                      "hotter": plain == hotter, "long_seconds": long.get_end_time(), "default_rule": plain == ruled,
                      "free_differs": plain != free, "refused": refused, "default_rhythm": plain == default_rhythm,
                      "steadier": plain == steadier, "refused_rhythm": refused_rhythm,
                      "instruments": [len(p.instruments) for p in parsed], "module": module}))
"""


def test_pyfunc_in_a_fresh_process_returns_midi_and_interpolations(trained, tmp_path):
    import mlflow.pyfunc

    _, bundle = trained
    model_dir = tmp_path / "model"
    # saved as the registry saves it: the record's pyfunc class and code paths
    mlflow.pyfunc.save_model(str(model_dir), python_model=FAMILY.pyfunc(), artifacts={"bundle": str(bundle)},
                             code_paths=FAMILY.code_paths())
    script = FRESH_PREDICT.replace("TEMPERATURE", repr(GALLERY_TEMPERATURE)).replace("OWN_ODDS", repr(RHYTHM_TEMPERATURE))
    result = run_in_fresh_process(script, model_dir, timeout=180)
    assert result == {**result, "n": 3, "same": True, "melodies": 2, "strip": 4, "plain": ["bytes", "bytes"],
                      "default_temperature": True, "hotter": False, "default_rule": GALLERY_FORBIDS_CONSECUTIVES,
                      "default_rhythm": True, "steadier": False}
    assert "forbid_consecutives must be true or false" in result["refused"]
    assert "rhythm_temperature must be above 0" in result["refused_rhythm"]
    assert result["long_seconds"] > 6 * 4 * step_seconds() * 4  # more than 6 bars of 16 steps: an 8-bar phrase
    assert result["instruments"] == [4, 4, 4, 1, 1, 4, 4, 4, 4]  # one instrument per voice
    assert result["module"].startswith(str(model_dir)), "the pyfunc must come from the model's own code path"


# --- rendering ---------------------------------------------------------------------------


@pytest.mark.parametrize("renderer", ["pretty_midi", "fluidsynth"])
def test_rendered_wav_is_not_silent_and_lasts_as_long_as_the_midi(renderer, tmp_path):
    if renderer == "fluidsynth" and not midi_audio.fluidsynth_available():
        pytest.skip("fluidsynth or a soundfont is not installed")
    window = windows("chorale", 1, seed=2)[0]
    rendered = music_render.render_tokens(window, renderer=renderer)
    assert rendered.renderer == renderer
    midi_s = music_render.midi_seconds(window)
    # a short release tail after the last note is allowed (fluidsynth keeps RELEASE_TAIL_S)
    assert midi_s - 0.1 <= rendered.seconds <= midi_s + midi_audio.RELEASE_TAIL_S + 0.1
    path = midi_audio.write_wav(rendered, tmp_path / "a.wav")
    audio, rate = midi_audio.read_wav(path.read_bytes())
    assert rate == rendered.sample_rate and np.sqrt(np.mean(audio**2)) > 1e-3
    assert music_render.write_midi(window, tmp_path / "a.mid").stat().st_size > 0
    # what `atelier sample` writes beside a .mid: the same audio as WAV bytes, and who rendered it
    wav, name = midi_audio.render_wav(tokens_to_midi_bytes(window), renderer=renderer)
    assert name == renderer and wav == rendered.wav_bytes()


def test_pictures_are_uint8_and_encode_as_png():
    window = windows("chorale", 1, seed=3)[0]
    roll = music_render.pianoroll_image(window)
    assert roll.dtype == np.uint8 and roll.ndim == 3 and roll.shape[1] == STEPS * music_render.PIXELS_PER_STEP
    assert roll.any()
    rendered = music_render.render_tokens(window, renderer="pretty_midi")
    mel = music_render.mel_spectrogram_image(rendered.audio, rendered.sample_rate)
    assert mel.dtype == np.uint8 and mel.shape[0] == music_render.MEL_BANDS and mel.std() > 0
    assert png_bytes(roll).startswith(b"\x89PNG")  # as the gallery encodes it


# --- metrics -----------------------------------------------------------------------------


def test_metric_sanity():
    x = windows("chorale", 4)
    assert music_metrics.token_accuracy(x, x) == 1.0
    values = np.random.default_rng(0).normal(size=200)
    assert music_metrics.overlapping_area(values, values) == pytest.approx(1.0)
    assert music_metrics.overlapping_area(values, values + 100) < 1e-6
    assert music_metrics.overlapping_area([2.0] * 10, [2.0] * 10) == pytest.approx(1.0)  # constant features
    c_major = np.full(STEPS, HOLD, np.uint8)
    c_major[::4] = [60, 62, 64, 65, 67, 69, 71, 72]
    stats = music_metrics.window_statistics(c_major)
    assert stats["scale_consistency"] == 1.0 and stats["pitch_range"] == 12 and stats["empty_beat_rate"] == 0
    assert stats["polyphony"] == 1.0 and stats["pitch_class_entropy"] == pytest.approx(np.log2(7) + 0, abs=0.1)
    chord = np.full((4, STEPS), HOLD, np.uint8)
    chord[:, 0], chord[:, 16] = [72, 67, 64, 48], NOTE_OFF
    stats = music_metrics.window_statistics(chord)
    assert stats["polyphony"] == 4.0 and stats["empty_beat_rate"] == 0.5


def chorale_in_c() -> np.ndarray:
    """(4, 32): I IV V I vi ii V7 I in C, a quarter note each, voiced without parallel fifths or octaves."""
    chords = [(72, 67, 64, 48), (72, 69, 65, 53), (71, 67, 62, 55), (72, 67, 64, 48),
              (72, 69, 64, 57), (74, 69, 65, 50), (74, 71, 65, 55), (72, 67, 64, 48)]
    window = np.full((4, STEPS), HOLD, np.uint8)
    window[:, ::4] = np.array(chords).T
    return window


def test_the_rhythm_is_drawn_at_its_own_temperature_and_the_pitch_at_the_requests():
    """A voice's odds of striking, releasing or holding follow `rhythm_temperature`; which pitch it
    strikes follows `temperature`; equal temperatures are one softmax, as before."""
    logits = torch.randn(64, NOTE_OFF + 2, generator=torch.Generator().manual_seed(0)) * 2
    logits[:, NOTE_OFF + 1] += 3  # HOLD the likeliest token, as in a chorale
    logits[:8, :NOTE_OFF] = float("-inf")  # every pitch forbidden (the voice-leading rule's mask, at its most)
    for temperature, rhythm in [(0.5, 1.0), (0.25, 0.75), (1.5, 1.0)]:
        probs = token_probabilities(logits, temperature, rhythm)
        assert not probs.isnan().any() and torch.allclose(probs.sum(-1), torch.ones(64))
        kinds = torch.softmax(logits / rhythm, -1)
        assert torch.allclose(probs[:, NOTE_OFF:], kinds[:, NOTE_OFF:], atol=1e-6)
        assert torch.allclose(probs[:, :NOTE_OFF].sum(-1), kinds[:, :NOTE_OFF].sum(-1), atol=1e-6)
        pitches = torch.softmax(logits[8:, :NOTE_OFF] / temperature, -1)
        assert torch.allclose(probs[8:, :NOTE_OFF] / probs[8:, :NOTE_OFF].sum(-1, keepdim=True), pitches, atol=1e-5)
        assert (probs[:8, :NOTE_OFF] == 0).all()
    assert torch.equal(token_probabilities(logits, 0.5, 0.5), torch.softmax(logits / 0.5, -1))
    # drawn: a held note as often as the model's odds say at rhythm 1, far more often under one cold softmax
    row = torch.randn(NOTE_OFF + 2, generator=torch.Generator().manual_seed(2))
    row[HOLD] = torch.logsumexp(row[:HOLD], 0)  # held half the time at the model's odds
    held = {rhythm: (pick_tokens(row.expand(20_000, -1), 0.5, torch.Generator().manual_seed(1), rhythm) == HOLD)
            .float().mean().item() for rhythm in (1.0, 0.5)}
    assert abs(held[1.0] - 0.5) < 0.02 and held[0.5] > 0.6


def test_harmony_statistics_tell_a_chorale_from_random_pitches_and_count_parallels():
    window = chorale_in_c().astype(np.int64)
    bach_like = np.stack([np.where(window < NOTE_OFF, window + shift, window) for shift in range(-5, 7)]).astype(np.uint8)
    bach = music_metrics.harmony_statistics(bach_like)
    random = music_metrics.harmony_statistics(music_metrics.random_pitches(bach_like, seed=0))
    assert bach["chord_share"] == 1.0 and bach["parallels_per_bar"] == 0.0 and bach["key_correlation"] > 0.8
    assert random["chord_share"] < 0.5 and random["key_correlation"] < bach["key_correlation"] - 0.15
    assert random["parallels_per_bar"] > 0
    # soprano and bass a fifth apart, moving together four times; alto and tenor hold a chord tone
    fifths = np.full((4, STEPS), HOLD, np.uint8)
    fifths[0, ::8] = [67, 69, 71, 72]  # G A B C
    fifths[3, ::8] = [48, 50, 52, 53]  # C D E F: fifths (compound) with the soprano throughout
    fifths[1:3, 0] = [64, 60]
    assert music_metrics.harmony_statistics(fifths[None])["parallels_per_bar"] == 3 / 2  # 3 moves in 2 bars
    # texture: the chorale changes chord on every beat, all four voices sounding, and never by one voice alone
    assert bach["sonorities_per_bar"] == 4 and bach["single_voice_moves"] == 0
    passing = chorale_in_c()
    passing[0, 2] = 74  # the soprano moves alone to D on the first beat's second eighth, then all move to IV
    texture = music_metrics.harmony_statistics(passing[None])
    assert texture["sonorities_per_bar"] == 9 / 2 and texture["single_voice_moves"] == 1 / 8
    assert music_metrics.parallel_motions(np.array([67, 60]), np.array([74, 67])) == {"fifths": 1, "octaves": 0}
    assert music_metrics.parallel_motions(np.array([72, 60]), np.array([74, 62])) == {"fifths": 0, "octaves": 1}
    assert music_metrics.parallel_motions(np.array([67, 60]), np.array([62, 55])) == {"fifths": 1, "octaves": 0}
    # contrary motion into a fifth, or a held voice, is no parallel; the contrary one is counted apart
    assert music_metrics.parallel_motions(np.array([67, 60]), np.array([74, 55])) == {"fifths": 0, "octaves": 0}
    assert music_metrics.contrary_motions(np.array([67, 60]), np.array([74, 55])) == {"fifths": 1, "octaves": 0}
    assert music_metrics.contrary_motions(np.array([72, 60]), np.array([74, 50])) == {"fifths": 0, "octaves": 1}
    assert music_metrics.contrary_motions(np.array([67, 60]), np.array([74, 67])) == {"fifths": 0, "octaves": 0}
    assert music_metrics.parallel_motions(np.array([67, 60]), np.array([67, 62])) == {"fifths": 0, "octaves": 0}
    assert music_metrics.contrary_motions(np.array([67, 60]), np.array([67, 62])) == {"fifths": 0, "octaves": 0}
    assert bach["contrary_perfects_per_bar"] == 0.0 and random["contrary_perfects_per_bar"] > 0


def test_report_has_model_and_baselines_in_one_table(trained):
    (chorale, _), _ = trained
    report = music_metrics.evaluate(chorale.model, windows("chorale", 32), windows("chorale", 12, seed=9),
                                    n_samples=6, chroma_windows=3)
    table = report["likelihood"]
    assert set(table) == {"model", "most frequent token", "unigram"}
    model = table["model"]
    assert 0 <= model["teacher_forced_accuracy"] <= 1 and np.isfinite(model["neg_elbo_per_token"])
    assert model["neg_elbo_per_token"] >= 0 and model["posterior_mean_reconstruction_loss_per_token"] >= 0
    # the model has no exact likelihood, the unigram no posterior: neither row borrows the other's number
    assert "true_nll_per_token" not in model and "nll_per_token" not in model
    assert set(table["unigram"]) >= {"true_nll_per_token"} and "neg_elbo_per_token" not in table["unigram"]
    assert set(report["statistics"]) == set(music_metrics.STATISTICS)
    assert report["temperature"] == GALLERY_TEMPERATURE
    assert 0 <= report["prior_statistics_overlap"] <= 1 and 0 <= report["heldout_vs_train_statistics_overlap"] <= 1
    text = music_metrics.format_report(report)
    assert "| most frequent token |" in text and "chroma" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    assert "reconstruction loss at posterior mean" in lines[header] and "not a likelihood" in lines[header]
    assert "-ELBO / token" in lines[header] and "true NLL / token" in lines[header]
    rows = {cells[0]: cells[1:] for cells in (line.strip("| ").split(" | ") for line in lines[header + 2 : header + 5])}
    columns = list(music_metrics.LIKELIHOOD_COLUMNS)
    assert rows["model"][columns.index("true_nll_per_token")] == "—"
    assert rows["unigram"][columns.index("posterior_mean_reconstruction_loss_per_token")] == "—"
    assert "overlap: held-out vs train (reference)" in text and f"temperature {GALLERY_TEMPERATURE:g}" in text
    assert set(report["harmony"]) == {"prior", f"prior_{GALLERY_BARS}_bars", "gallery", "heldout", "random_pitches"}
    gallery = report["harmony"]["gallery"]
    assert gallery["parallels_per_bar"] == gallery["contrary_perfects_per_bar"] == gallery["hidden_perfects_per_bar"] == 0
    assert all(set(row) == set(music_metrics.HARMONY) for row in report["harmony"].values())
    assert "| random_pitches |" in text
    with pytest.raises(ValueError, match="held-out windows"):
        music_metrics.evaluate(chorale.model, windows("chorale", 32), windows("chorale", 1)[:0], n_samples=2)


def test_averaging_posterior_samples_steadies_the_neg_elbo(trained):
    (chorale, _), _ = trained
    heldout = windows("chorale", 4, seed=11)

    def spread(elbo_samples: int) -> float:
        estimates = [music_metrics.reconstruction(chorale.model, heldout, seed=seed, elbo_samples=elbo_samples)
                     ["neg_elbo_per_token"] for seed in range(6)]
        return float(np.std(estimates))

    assert spread(16) < spread(1)
    with pytest.raises(ValueError):
        music_metrics.reconstruction(chorale.model, heldout, elbo_samples=0)


def test_statistics_overlap_is_one_for_the_same_windows_and_counts_silence_as_no_overlap():
    real = windows("chorale", 24, seed=4)
    same = music_metrics.compare_statistics(real, real)
    assert music_metrics.mean_overlap(same, voices=4) == pytest.approx(1.0)
    silent = np.full_like(real, HOLD)  # no notes: pitch statistics are undefined, not averaged away
    assert music_metrics.mean_overlap(music_metrics.compare_statistics(silent, real), voices=4) < 0.5
    # one voice always has polyphony 1: it would lift every melody model's mean for nothing
    assert "polyphony" not in music_metrics.judged_statistics(1) and "polyphony" in music_metrics.judged_statistics(4)


def test_champion_rule_weighs_neg_elbo_and_guards_the_prior_samples():
    champion = {"neg_elbo_per_token": 0.50, "prior_statistics_overlap": 0.80}
    assert CHAMPION_RULE.judge({"neg_elbo_per_token": 0.45, "prior_statistics_overlap": 0.79}, champion)[0]
    # a lower -ELBO does not buy worse music from the prior
    assert not CHAMPION_RULE.judge({"neg_elbo_per_token": 0.45, "prior_statistics_overlap": 0.75}, champion)[0]
    assert not CHAMPION_RULE.judge({"neg_elbo_per_token": 0.55, "prior_statistics_overlap": 0.95}, champion)[0]
