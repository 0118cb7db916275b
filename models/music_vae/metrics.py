"""The music VAE's held-out report, kept apart from training.

Likelihood side, on held-out windows (split by piece):
- per-token reconstruction accuracy, teacher-forced (true previous tokens as inputs) and
  sampled (the decoder's own greedy outputs as inputs), from the posterior mean, as in
  MusicVAE's Table 1; a "token" is one voice at one step, so melody numbers are per step;
- the reconstruction loss at z = posterior mean per token (the decoder's cross-entropy given
  the encoder's best guess: not a likelihood, since it leaves out the KL and the posterior's
  spread, so it flatters a model with weak KL pressure), and the negative ELBO per token
  (reconstruction averaged over a few posterior samples, plus the KL spread over the tokens),
  an upper bound on the model's true NLL per token, in nats;
- teacher-forced accuracy on event tokens only (note-ons and NOTE_OFF), since HOLD is most
  of every window and the most-frequent baseline scores high by predicting HOLD everywhere;
- baselines in the same table: the most frequent token per voice, and a per-voice unigram
  (its accuracy is the expected accuracy of sampling from it; its NLL is exact, so the
  model's -ELBO below it means the model's true NLL is below it too).

Music side, for N samples from the prior (at the gallery's temperature, so the numbers
describe what a listener hears) against N held-out windows: per-window statistics after muspy
0.5 (pitch-class entropy, scale consistency, pitch range, empty-beat rate, polyphony), each
compared as distributions by the overlapping area of their kernel density estimates (after
Yang & Lerch 2018, applied to the feature values themselves), with N held-out windows against
N training windows as the real-vs-real reference (the mean over the statistics is
`prior_statistics_overlap`); and the chroma (librosa) of rendered audio
compared as distributions (cosine of mean profiles, Frechet distance, mean per-pitch-class
overlapping area).

Harmony, for prior samples (windows, and phrases as long as the gallery's), held-out windows
and a random-pitch baseline (the held-out rhythms with each note's pitch drawn uniformly from
its voice's range): the share of vertical sonorities (>= 3 voices sounding) that are triads or
seventh chords, parallel fifths and octaves per bar, fifths and octaves by contrary motion per bar,
hidden fifths and octaves in the outer voices per bar, and key consistency (Krumhansl-Schmuckler:
the best correlation of the duration-weighted pitch-class histogram with the 24 rotated
Krumhansl-Kessler key profiles). The gallery's phrases are drawn without consecutive or hidden
fifths and octaves (a rule of the sampling); their row stands beside the model's own prior
samples, which are drawn without it.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from models.distances import frechet_distance
from models.midi_audio import render
from models.music_vae.network import PERFECT_INTERVALS, WHOLE_STEP, MusicVae, kl_divergence, reconstruction_nll
from models.music_vae.sampling import (
    GALLERY_BARS, GALLERY_FORBIDS_CONSECUTIVES, GALLERY_TEMPERATURE, RHYTHM_TEMPERATURE, STEPS_PER_BAR, sample,
)
from models.music_vae.tokens import (
    HOLD, NUM_CLASSES, NUM_PITCHES, STEPS_PER_QUARTER, as_voices, tokens_to_midi_bytes, tokens_to_notes,
)

EVAL_BATCH = 256
# Prior samples (and held-out windows) per statistics comparison: fewer, and the sampling seed alone
# moves the mean overlap as much as the champion guard's tolerance (docs/music-vae.md).
EVAL_SAMPLES = 256
ELBO_SAMPLES = 4  # posterior samples per window for -ELBO: the same expectation as one, a quarter of the variance
KDE_GRID_POINTS = 512
KDE_PADDING_BANDWIDTHS = 4.0  # the grid reaches this many bandwidths beyond the data
MIN_BANDWIDTH = 1e-2  # for a constant feature (e.g. polyphony of a melody): a narrow bump, not a division by 0
PITCH_CLASSES = 12
MAJOR = (0, 2, 4, 5, 7, 9, 11)
NATURAL_MINOR = (0, 2, 3, 5, 7, 8, 10)
STATISTICS = ("pitch_class_entropy", "scale_consistency", "pitch_range", "empty_beat_rate", "polyphony")
# Krumhansl & Kessler (1982) probe-tone ratings from the tonic up, as Krumhansl (1990) tabulates them
MAJOR_PROFILE = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
MINOR_PROFILE = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)
# Chord shapes above the root: the four triads, the five seventh chords, and the seventh chords
# without their fifth (how four voices often spell them)
CHORD_SHAPES = ((0, 4, 7), (0, 3, 7), (0, 3, 6), (0, 4, 8),
                (0, 4, 7, 10), (0, 4, 7, 11), (0, 3, 7, 10), (0, 3, 6, 10), (0, 3, 6, 9),
                (0, 4, 10), (0, 4, 11), (0, 3, 10))
CHORDS = frozenset(frozenset((root + step) % 12 for step in shape) for shape in CHORD_SHAPES for root in range(12))
MIN_CHORD_VOICES = 3
HARMONY = ("chord_share", "parallels_per_bar", "contrary_perfects_per_bar", "hidden_perfects_per_bar", "key_correlation",
           "sonorities_per_bar", "single_voice_moves")


def _rotations(profiles) -> np.ndarray:
    """(len(profiles) * 12, 12): each profile over the pitch classes, rotated to each of the 12 roots."""
    return np.array([np.roll(np.asarray(profile, np.float64), root) for profile in profiles for root in range(PITCH_CLASSES)])


SCALE_MASKS = _rotations([np.isin(np.arange(PITCH_CLASSES), scale) for scale in (MAJOR, NATURAL_MINOR)])  # (24, 12)
KEY_PROFILES = _rotations([MAJOR_PROFILE, MINOR_PROFILE])  # (24, 12)


# --- reconstruction and likelihood -------------------------------------------------------


def token_accuracy(predicted, target) -> float:
    """Fraction of equal tokens (any matching shapes)."""
    predicted, target = np.asarray(predicted), np.asarray(target)
    if predicted.shape != target.shape:
        raise ValueError(f"shapes differ: {predicted.shape} vs {target.shape}")
    return float((predicted == target).mean()) if target.size else float("nan")


@torch.no_grad()
def reconstruction(model: MusicVae, windows, seed: int = 0, batch_size: int = EVAL_BATCH,
                   elbo_samples: int = ELBO_SAMPLES) -> dict:
    """Held-out accuracy (teacher-forced, sampled) and reconstruction loss from the posterior
    mean, -ELBO per token from `elbo_samples` posterior samples per window, KL in bits."""
    if elbo_samples < 1:
        raise ValueError("elbo_samples must be at least 1")
    model.eval()
    device = next(model.parameters()).device
    tokens = torch.as_tensor(as_voices(windows, model.config.voices).astype(np.int64))
    per_sequence = model.config.voices * model.config.steps_per_window
    generator = torch.Generator().manual_seed(seed)
    totals = dict(tf_correct=0.0, sampled_correct=0.0, event_correct=0.0, events=0.0, loss_at_mean=0.0,
                  neg_elbo=0.0, kl=0.0)
    for i in range(0, len(tokens), batch_size):
        batch = tokens[i : i + batch_size].to(device)
        mu, sigma = model.encoder(batch)
        logits = model.decode_teacher_forced(mu, batch)
        hits = logits.argmax(-1) == batch.transpose(1, 2)
        totals["tf_correct"] += hits.sum().item()
        # HOLD is most tokens: accuracy on the events alone (note-ons, NOTE_OFF) shows the music
        events = batch.transpose(1, 2) != HOLD
        totals["event_correct"] += (hits & events).sum().item()
        totals["events"] += events.sum().item()
        totals["sampled_correct"] += (model.generate(mu, temperature=0.0) == batch).sum().item()
        totals["loss_at_mean"] += reconstruction_nll(logits, batch).sum().item()
        expected_loss = torch.zeros(len(batch), device=device)
        for _ in range(elbo_samples):
            z = mu + sigma * torch.randn(sigma.shape, generator=generator).to(device)
            expected_loss += reconstruction_nll(model.decode_teacher_forced(z, batch), batch) / elbo_samples
        kl = kl_divergence(mu, sigma)  # exact: only the reconstruction term needs samples
        totals["neg_elbo"] += (expected_loss + kl).sum().item()
        totals["kl"] += kl.sum().item()
    count = len(tokens) * per_sequence
    return {"teacher_forced_accuracy": totals["tf_correct"] / count, "sampled_accuracy": totals["sampled_correct"] / count,
            "teacher_forced_event_accuracy": totals["event_correct"] / max(totals["events"], 1),
            "posterior_mean_reconstruction_loss_per_token": totals["loss_at_mean"] / count,
            "neg_elbo_per_token": totals["neg_elbo"] / count,
            "kl_bits_per_window": totals["kl"] / max(len(tokens), 1) / math.log(2.0), "windows": len(tokens)}


def baselines(train_windows, heldout_windows, voices: int) -> dict[str, dict]:
    """Most frequent token and unigram, per voice, fitted on train, scored on held-out."""
    train, heldout = as_voices(train_windows, voices), as_voices(heldout_windows, voices)
    counts = np.stack([np.bincount(train[:, v].ravel(), minlength=NUM_CLASSES) for v in range(voices)]).astype(np.float64)
    probs = (counts + 1.0) / (counts + 1.0).sum(1, keepdims=True)  # add-one: no held-out token gets p = 0
    most_frequent = counts.argmax(1)
    target = heldout.transpose(1, 0, 2).reshape(voices, -1)  # (V, N*T)
    p_target = np.take_along_axis(probs, target.astype(np.int64), axis=1)
    hits = target == most_frequent[:, None]
    events = target != HOLD
    mf_accuracy = float(hits.mean())
    return {
        "most frequent token": {"teacher_forced_accuracy": mf_accuracy, "sampled_accuracy": mf_accuracy,
                                "teacher_forced_event_accuracy": float(hits[events].mean()) if events.any() else float("nan")},
        "unigram": {"teacher_forced_accuracy": float(p_target.mean()), "sampled_accuracy": float(p_target.mean()),
                    "teacher_forced_event_accuracy": float(p_target[events].mean()) if events.any() else float("nan"),
                    "true_nll_per_token": float(-np.log(p_target).mean())},
    }


# --- musical statistics ------------------------------------------------------------------


def sounding_pitches(voices) -> np.ndarray:
    """(V, T) tokens -> (V, T) sounding pitch per voice and step, -1 in silence."""
    voices = np.atleast_2d(np.asarray(voices))
    out = np.full(voices.shape, -1, dtype=np.int16)
    for v, row in enumerate(voices):
        for pitch, start, duration in tokens_to_notes(row):
            out[v, start : start + duration] = pitch
    return out


def window_statistics(voices) -> dict[str, float]:
    """muspy-style statistics of one window (T,) or (V, T); NaN where undefined (no notes)."""
    voices = np.atleast_2d(np.asarray(voices))
    pitches = np.array([p for row in voices for p, _, _ in tokens_to_notes(row)], dtype=np.int64)
    sounding = sounding_pitches(voices)
    steps = voices.shape[-1]
    beats = sounding.reshape(len(voices), -1, STEPS_PER_QUARTER) if steps % STEPS_PER_QUARTER == 0 else None
    ordered = np.sort(sounding, axis=0)  # distinct sounding pitches per step: the changes down a sorted column
    distinct = np.concatenate([ordered[:1] >= 0, (ordered[1:] != ordered[:-1]) & (ordered[1:] >= 0)])
    active = distinct.sum(0)
    stats = {name: float("nan") for name in STATISTICS}
    if beats is not None:
        stats["empty_beat_rate"] = float(1.0 - (beats >= 0).any(axis=(0, 2)).mean())
    if active.any():
        stats["polyphony"] = float(active[active > 0].mean())
    if len(pitches):
        histogram = np.bincount(pitches % PITCH_CLASSES, minlength=PITCH_CLASSES) / len(pitches)
        nonzero = histogram[histogram > 0]
        stats["pitch_class_entropy"] = float(-(nonzero * np.log2(nonzero)).sum())
        stats["scale_consistency"] = float((SCALE_MASKS @ histogram).max())  # the share of notes in the best scale
        stats["pitch_range"] = float(pitches.max() - pitches.min())
    return stats


def statistics_table(windows) -> dict[str, np.ndarray]:
    rows = [window_statistics(w) for w in windows]
    return {name: np.array([row[name] for row in rows]) for name in STATISTICS}


def _kde(values: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    density = np.exp(-0.5 * ((grid[:, None] - values[None, :]) / bandwidth) ** 2).sum(1)
    return density / density.sum()  # normalised on the grid: identical inputs give exactly 1


def scott_bandwidth(values: np.ndarray) -> float:
    return max(float(np.std(values)) * len(values) ** (-1 / 5), MIN_BANDWIDTH)


def overlapping_area(a, b) -> float:
    """Overlapping area of two samples' Gaussian KDEs (Scott bandwidth): 1 = same distribution,
    0 = disjoint. NaNs are dropped; NaN if either side is empty."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return float("nan")
    bw_a, bw_b = scott_bandwidth(a), scott_bandwidth(b)
    pad = KDE_PADDING_BANDWIDTHS * max(bw_a, bw_b)
    grid = np.linspace(min(a.min(), b.min()) - pad, max(a.max(), b.max()) + pad, KDE_GRID_POINTS)
    return float(np.minimum(_kde(a, grid, bw_a), _kde(b, grid, bw_b)).sum())


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def compare_statistics(candidate, reference) -> dict[str, dict]:
    """Per statistic: both means and the overlapping area of the two samples' distributions."""
    ours, theirs = statistics_table(candidate), statistics_table(reference)
    return {name: {"candidate_mean": _nanmean(ours[name]), "reference_mean": _nanmean(theirs[name]),
                   "overlapping_area": overlapping_area(ours[name], theirs[name])}
            for name in STATISTICS}


def judged_statistics(voices: int) -> tuple[str, ...]:
    """The statistics that can tell windows of this many voices apart: one voice's polyphony is 1 by construction."""
    return tuple(name for name in STATISTICS if not (voices == 1 and name == "polyphony"))


def mean_overlap(comparison: dict[str, dict], voices: int) -> float:
    """Mean overlapping area over the judged statistics. A statistic one side never defines (all its
    windows silent) overlaps nothing: it counts 0, so a silent model cannot score on the rest."""
    areas = [comparison[name]["overlapping_area"] for name in judged_statistics(voices)]
    return float(np.mean([area if math.isfinite(area) else 0.0 for area in areas]))


# --- harmony ---------------------------------------------------------------------------


def sonorities(voices) -> np.ndarray:
    """(S, V) sounding pitches (-1 silent) of each vertical sonority of a window (T,) or (V, T):
    a new sonority wherever any voice's sounding pitch changes."""
    sounding = sounding_pitches(voices).T
    changes = np.ones(len(sounding), dtype=bool)
    changes[1:] = (sounding[1:] != sounding[:-1]).any(1)
    return sounding[changes]


def is_chord(pitches) -> bool:
    """Whether the pitch classes of the sounding pitches spell a triad or a seventh chord."""
    return frozenset(int(p) % 12 for p in pitches if p >= 0) in CHORDS


def parallel_motions(before, after) -> dict[str, int]:
    """Parallel fifths and octaves (compound, unisons included) between two consecutive sonorities
    (V,): a voice pair at the same perfect interval in both whose voices both move the same way."""
    return consecutive_perfects(before, after)[0]


def contrary_motions(before, after) -> dict[str, int]:
    """Fifths and octaves by contrary motion: as `parallel_motions`, the two voices moving opposite ways."""
    return consecutive_perfects(before, after)[1]


def consecutive_perfects(before, after) -> tuple[dict[str, int], dict[str, int]]:
    """(parallel, contrary) fifths and octaves between two consecutive sonorities, in one pass."""
    parallel = {name: 0 for name in PERFECT_INTERVALS.values()}
    contrary = dict(parallel)
    for upper in range(len(before)):
        for lower in range(upper + 1, len(before)):
            if min(before[upper], before[lower], after[upper], after[lower]) < 0:
                continue
            interval = (before[upper] - before[lower]) % 12
            if interval not in PERFECT_INTERVALS or interval != (after[upper] - after[lower]) % 12:
                continue
            moves = np.sign(after[upper] - before[upper]), np.sign(after[lower] - before[lower])
            if moves[0] != 0 and moves[0] == moves[1]:
                parallel[PERFECT_INTERVALS[interval]] += 1
            elif moves[0] != 0 and moves[0] == -moves[1]:
                contrary[PERFECT_INTERVALS[interval]] += 1
    return parallel, contrary


def hidden_perfects(before, after) -> int:
    """1 if the outer voices of two consecutive sonorities (V,), V >= 2, make hidden fifths or
    octaves: both moving the same way into a perfect interval class they did not hold before, the
    top voice by leap (more than a whole step); else 0."""
    if len(before) < 2:
        return 0
    top_was, bass_was, top, bass = (int(pitch) for pitch in (before[0], before[-1], after[0], after[-1]))
    if min(top_was, bass_was, top, bass) < 0:
        return 0
    arriving = (top - bass) % 12
    return int(arriving in PERFECT_INTERVALS and arriving != (top_was - bass_was) % 12
               and abs(top - top_was) > WHOLE_STEP and np.sign(top - top_was) == np.sign(bass - bass_was))


def key_correlation(voices) -> float:
    """Krumhansl-Schmuckler: the highest Pearson correlation of the window's duration-weighted
    pitch-class histogram with the 12 rotations of the major and the minor profile; NaN if silent
    or if one pitch class is all there is."""
    sounding = sounding_pitches(voices)
    histogram = np.bincount(sounding[sounding >= 0] % 12, minlength=12).astype(np.float64)
    if np.count_nonzero(histogram) < 2:
        return float("nan")
    centred, profiles = histogram - histogram.mean(), KEY_PROFILES - KEY_PROFILES.mean(1, keepdims=True)
    pearson = profiles @ centred / (np.linalg.norm(profiles, axis=1) * np.linalg.norm(centred))
    return float(pearson.max())


def harmony_statistics(windows) -> dict[str, float]:
    """Pooled over windows (N, T) or (N, V, T): the share of sonorities with >= 3 voices sounding
    that are chords, parallel fifths and octaves per bar, those by contrary motion and the outer
    voices' hidden ones (NaN for one voice), and the mean key correlation. And the texture: how
    many sonorities a bar, and the share of changes between two sonorities with every voice
    sounding in which one voice alone moves (a passing or neighbour note; NaN for one voice)."""
    chords = full = parallels = contrary = hidden = bars = count = moves = single_moves = 0
    keys, pairs = [], False
    for window in windows:
        window = np.atleast_2d(window)
        found = sonorities(window)
        count += len(found)
        sounding = (found >= 0).sum(1) >= MIN_CHORD_VOICES
        chords += sum(is_chord(row) for row in found[sounding])
        full += int(sounding.sum())
        for a, b in zip(found[:-1], found[1:]):
            same_way, opposite_ways = consecutive_perfects(a, b)
            parallels += sum(same_way.values())
            contrary += sum(opposite_ways.values())
            hidden += hidden_perfects(a, b)
            if (a >= 0).all() and (b >= 0).all():
                moves += 1
                single_moves += int((a != b).sum() == 1)
        bars += window.shape[-1] / STEPS_PER_BAR
        pairs = pairs or len(window) > 1
        keys.append(key_correlation(window))
    keys = np.array(keys, dtype=np.float64)
    return {"chord_share": chords / full if full else float("nan"),
            "parallels_per_bar": parallels / bars if bars and pairs else float("nan"),
            "contrary_perfects_per_bar": contrary / bars if bars and pairs else float("nan"),
            "hidden_perfects_per_bar": hidden / bars if bars and pairs else float("nan"),
            "key_correlation": _nanmean(keys),
            "sonorities_per_bar": count / bars if bars else float("nan"),
            "single_voice_moves": single_moves / moves if moves and pairs else float("nan")}


def random_pitches(windows, seed: int = 0) -> np.ndarray:
    """The windows' rhythms (N, V, T) with each note-on's pitch drawn uniformly from its voice's
    range over all the windows: the baseline a harmony statistic must tell apart from music."""
    windows = np.array(windows, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for voice in range(windows.shape[1]):
        tokens = windows[:, voice]
        notes = tokens < NUM_PITCHES
        if notes.any():
            low, high = int(tokens[notes].min()), int(tokens[notes].max())
            tokens[notes] = rng.integers(low, high + 1, size=int(notes.sum()))
    return windows


# --- chroma of rendered audio ------------------------------------------------------------


def chroma_profiles(windows, renderer: str = "pretty_midi") -> np.ndarray:
    """(N, 12) time-averaged, sum-normalised chroma of each window's rendered audio.
    pretty_midi's sines by default: fast, and the same timbre for real and generated."""
    import librosa

    profiles = []
    for window in windows:
        rendered = render(tokens_to_midi_bytes(window), renderer)
        if not len(rendered.audio) or not np.abs(rendered.audio).max() > 0:
            profiles.append(np.full(PITCH_CLASSES, 1.0 / PITCH_CLASSES))  # silence: no pitch class preferred
            continue
        chroma = librosa.feature.chroma_stft(y=rendered.audio, sr=rendered.sample_rate).mean(axis=1)
        profiles.append(chroma / max(chroma.sum(), 1e-12))
    return np.array(profiles).reshape(-1, PITCH_CLASSES)


def compare_chroma(generated_profiles: np.ndarray, real_profiles: np.ndarray) -> dict[str, float]:
    mean_g, mean_r = generated_profiles.mean(0), real_profiles.mean(0)
    cosine = float(mean_g @ mean_r / max(np.linalg.norm(mean_g) * np.linalg.norm(mean_r), 1e-12))
    oa = [overlapping_area(generated_profiles[:, k], real_profiles[:, k]) for k in range(PITCH_CLASSES)]
    return {"mean_profile_cosine": cosine, "frechet_distance": frechet_distance(generated_profiles, real_profiles),
            "mean_pitch_class_overlap": float(np.nanmean(oa))}


# --- the report --------------------------------------------------------------------------


def evaluate(model: MusicVae, train_windows, heldout_windows, n_samples: int = EVAL_SAMPLES, seed: int = 0,
             temperature: float = GALLERY_TEMPERATURE, chroma_windows: int = 32, renderer: str = "pretty_midi",
             elbo_samples: int = ELBO_SAMPLES) -> dict:
    """Everything above for one model: held-out likelihood next to baselines, and N samples from
    the prior against N held-out windows (statistics, chroma), with N held-out against N training
    windows as the real-vs-real reference for the statistics."""
    voices, steps_per_window = model.config.voices, model.config.steps_per_window
    heldout, train = as_voices(heldout_windows, voices), as_voices(train_windows, voices)
    if not len(heldout) or not len(train):
        raise ValueError(f"{model.config.kind}: {len(train)} training and {len(heldout)} held-out windows; both are "
                         "needed (raise midi_corpus's heldout_percent, or add pieces)")
    rng = np.random.default_rng(seed)
    real = heldout[rng.choice(len(heldout), size=min(n_samples, len(heldout)), replace=False)]
    train_real = train[rng.choice(len(train), size=min(n_samples, len(train)), replace=False)]
    generated = as_voices(sample(model, n_samples, seed=seed, temperature=temperature), voices)
    table = {"model": reconstruction(model, heldout, seed=seed, elbo_samples=elbo_samples),
             **baselines(train, heldout, voices)}
    prior_vs_heldout = compare_statistics(generated, real)
    heldout_vs_train = compare_statistics(real, train_real)
    statistics = {name: {"heldout_mean": prior_vs_heldout[name]["reference_mean"],
                         "prior_sample_mean": prior_vs_heldout[name]["candidate_mean"],
                         "prior_vs_heldout_overlap": prior_vs_heldout[name]["overlapping_area"],
                         "heldout_vs_train_overlap": heldout_vs_train[name]["overlapping_area"]}
                  for name in STATISTICS}
    report = {"kind": model.config.kind, "heldout_windows": len(heldout), "n_samples": n_samples,
              "temperature": temperature, "rhythm_temperature": RHYTHM_TEMPERATURE, "elbo_samples": elbo_samples,
              "likelihood": table, "statistics": statistics,
              "judged_statistics": list(judged_statistics(voices)),
              "prior_statistics_overlap": mean_overlap(prior_vs_heldout, voices),
              "heldout_vs_train_statistics_overlap": mean_overlap(heldout_vs_train, voices)}
    # as many steps as the windows above, in the gallery's longer phrases
    phrase_count = max(1, n_samples * steps_per_window // (GALLERY_BARS * STEPS_PER_BAR))
    phrases = sample(model, phrase_count, seed=seed, temperature=temperature, bars=GALLERY_BARS)
    gallery_phrases = sample(model, phrase_count, seed=seed, temperature=temperature, bars=GALLERY_BARS,
                             forbid_consecutives=GALLERY_FORBIDS_CONSECUTIVES)
    report["harmony"] = {"prior": harmony_statistics(generated),
                         f"prior_{GALLERY_BARS}_bars": harmony_statistics(as_voices(phrases, voices)),
                         "gallery": harmony_statistics(as_voices(gallery_phrases, voices)),
                         "heldout": harmony_statistics(real),
                         "random_pitches": harmony_statistics(random_pitches(real, seed))}
    if chroma_windows:
        report["chroma"] = {**compare_chroma(chroma_profiles(generated[:chroma_windows], renderer),
                                             chroma_profiles(real[:chroma_windows], renderer)), "renderer": renderer}
    return report


def _cell(value) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


LIKELIHOOD_COLUMNS = {  # report key -> table header; a reconstruction loss and a true NLL never share a column
    "teacher_forced_accuracy": "teacher-forced acc",
    "sampled_accuracy": "sampled acc",
    "teacher_forced_event_accuracy": "teacher-forced acc on events",
    "posterior_mean_reconstruction_loss_per_token": "reconstruction loss at posterior mean / token (nats; not a likelihood)",
    "neg_elbo_per_token": "-ELBO / token (nats; upper bound on NLL)",
    "true_nll_per_token": "true NLL / token (nats)",
}


def format_report(report: dict) -> str:
    """The report as markdown tables."""
    lines = [f"**{report['kind']}**: {report['heldout_windows']} held-out windows; -ELBO from "
             f"{report['elbo_samples']} posterior samples per window", "",
             "| model | " + " | ".join(LIKELIHOOD_COLUMNS.values()) + " |",
             "|---" * (len(LIKELIHOOD_COLUMNS) + 1) + "|"]
    for name, row in report["likelihood"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(row.get(key)) for key in LIKELIHOOD_COLUMNS) + " |")
    lines += ["", f"{report['n_samples']} prior samples at temperature {report['temperature']:g} (the gallery's; "
                  f"rhythm at {report['rhythm_temperature']:g}) "
                  f"against as many held-out windows; held-out against training windows is the real-vs-real reference", "",
              "| statistic | held-out mean | prior-sample mean | overlap: prior samples vs held-out | "
              "overlap: held-out vs train (reference) |", "|---|---|---|---|---|"]
    for name, row in report["statistics"].items():
        judged = "" if name in report["judged_statistics"] else " (not judged: constant for one voice)"
        lines.append(f"| {name}{judged} | {_cell(row['heldout_mean'])} | {_cell(row['prior_sample_mean'])} | "
                     f"{_cell(row['prior_vs_heldout_overlap'])} | {_cell(row['heldout_vs_train_overlap'])} |")
    lines.append(f"| **mean over judged statistics** | | | **{_cell(report['prior_statistics_overlap'])}** | "
                 f"**{_cell(report['heldout_vs_train_statistics_overlap'])}** |")
    if "chroma" in report:
        chroma = report["chroma"]
        lines += ["", f"chroma of prior samples vs held-out ({chroma['renderer']}): mean-profile cosine "
                      f"{_cell(chroma['mean_profile_cosine'])}, Frechet {_cell(chroma['frechet_distance'])}, "
                      f"mean pitch-class overlap {_cell(chroma['mean_pitch_class_overlap'])}"]
    lines += ["", "harmony (prior samples at the same temperature; gallery: its phrases, drawn without consecutive "
                  "or hidden fifths and octaves; hidden: outer voices only; random_pitches: the held-out rhythms "
                  "with random pitches in each voice's range)",
              "", "| windows | " + " | ".join(HARMONY) + " |",
              "|---" * (len(HARMONY) + 1) + "|"]
    for source, row in report["harmony"].items():
        lines.append(f"| {source} | " + " | ".join(_cell(row[name]) for name in HARMONY) + " |")
    return "\n".join(lines)
