"""Training the video model: the trainer interface (`VideoRnnFamily`), the clips it reads, the
bundle it exports and `run_training`, what `python -m models.train --family video-rnn` calls."""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.batches import InMemoryRows, LoaderConfig, Rows
from models.bundle import save_bundle
from models.trainer import to_device
from models.video_rnn import CHAMPION_RULE
from models.video_rnn.config import VideoRnnConfig
from models.video_rnn.frames import model_frames, prepare_clips, to_float_frames
from models.video_rnn.metrics import evaluate, format_table, ssim_torch
from models.video_rnn.network import VideoRnn, head_nll, lost_detail
from models.video_rnn.predrnn import PredRnnState
from models.video_rnn.sampling import BUNDLE_FORMAT, WARM_START_FORMATS, load_bundle, load_model

EXAMPLE_CONTEXTS = 4  # held-out contexts the bundle keeps, so a request needs none
FRAMES = "frames"  # the clips table's tensor column


def augment_clip(clip: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """clip (T, H, W, C); flips: 4 booleans (horizontal, vertical, transpose, reverse time)."""
    if flips[0]:
        clip = clip.flip(2)
    if flips[1]:
        clip = clip.flip(1)
    if flips[2]:
        clip = clip.transpose(1, 2)
    if flips[3]:
        clip = clip.flip(0)
    return clip


AUGMENTATIONS = 4


RAMP_TIME_CONSTANTS = 5  # reverse scheduled sampling's exponential is within e^-5 of 1 at the ramp's end


def true_context_probability(step: int, config: VideoRnnConfig) -> float:
    """Reverse scheduled sampling (PredRNN-V2): the probability that a context frame after the
    first is the true one rather than the model's prediction. `true_context_start` until the
    ramp's first fraction of `steps`, then an exponential rise, 1 from its last fraction on."""
    first, last = (fraction * config.steps for fraction in config.true_context_ramp)
    if step < first:
        return config.true_context_start
    if step >= last:
        return 1.0
    return 1.0 - (1.0 - config.true_context_start) * math.exp(-RAMP_TIME_CONSTANTS * (step - first) / (last - first))


def decoupling_term(context, *branches) -> torch.Tensor | None:
    """PredRNN-V2's decoupling term, averaged over every step of the branches that continued from
    the `context` state; None for a recurrence without one."""
    if not isinstance(context, PredRnnState):
        return None
    total = sum(branch.decoupling - context.decoupling for branch in branches) + context.decoupling
    steps = sum(branch.steps - context.steps for branch in branches) + context.steps
    return total / max(steps, 1)


def cosine_factor(step: int, steps: int, floor: float) -> float:
    progress = min(step / max(steps, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class VideoRnnFamily:
    """Trainer interface (models.trainer.Family) on uint8 clips (N, T, H, W, C) with
    T >= context_frames + horizon, converted to the config's channels and resolution as they
    are read: arrays, or Rows with a "frames" column (`training_clips`)."""

    def __init__(self, config: VideoRnnConfig, clips_uint8):
        if not isinstance(clips_uint8, Rows):
            clips_uint8 = InMemoryRows({FRAMES: np.array(prepare_clips(clips_uint8, config.channels, config.resolution),
                                                         dtype=np.uint8)})  # a copy torch may own
        self.rows, self.config = clips_uint8, config
        frames = self.rows.row_shape(FRAMES)[0]
        if frames < config.clip_frames:
            raise ValueError(f"clips have {frames} frames; the config needs {config.clip_frames}")
        if self.rows.num_rows < 1:
            raise ValueError("no clips to train on")
        torch.manual_seed(config.seed)  # the initial weights are part of the run's identity
        self.model = VideoRnn(config)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cosine_factor(step, config.steps, config.min_lr_ratio))

    def modules(self) -> dict[str, nn.Module]:
        return {"video_rnn": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"video_rnn": self.optimizer}

    def schedulers(self) -> dict[str, Any]:
        return {"video_rnn": self.scheduler}

    def to(self, device: torch.device, channels_last: bool) -> None:
        self.model.to(device)  # the convs run on 16x16 maps and 1-row windows: NHWC is not used

    def make_batch(self, columns: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """Float clips (B, M+K, C, H, W) in [0, 1], randomly cropped in time and augmented."""
        cfg = self.config
        clips = columns[FRAMES]
        spare = clips.size(1) - cfg.clip_frames
        starts = torch.randint(0, spare + 1, (len(clips),))
        flips = torch.rand(len(clips), AUGMENTATIONS) < 0.5
        chosen = []
        for clip, start, flip in zip(clips, starts.tolist(), flips):
            clip = clip[start : start + cfg.clip_frames]
            chosen.append(augment_clip(clip, flip) if cfg.augment else clip)
        return to_device(to_float_frames(torch.stack(chosen)), device)

    def train_step(self, batch: torch.Tensor, step: int, autocast) -> dict[str, float]:
        cfg = self.config
        m, k = cfg.context_frames, cfg.horizon
        self.model.train()
        inputs = model_frames(batch, cfg.levels)  # what the model reads; the means' targets stay the true frames
        true_probability = true_context_probability(step, cfg)
        keep_true = torch.rand(len(batch), m, device=batch.device) < true_probability if true_probability < 1 else None
        with autocast():
            one_step, features, state = self.model.read(inputs[:, :m], keep_true=keep_true)
            rolled, free_state = self.model.roll(one_step[:, -1], state, k - 1)
            free_means = torch.cat([one_step[:, -1:], rolled], dim=1)
            branches = [free_state]
            if k > 1:  # the teacher-forced branch continues from the same state
                future_means, future_features, future_state = self.model.read(inputs[:, m : m + k - 1], state)
                one_step = torch.cat([one_step, future_means], dim=1)
                features = torch.cat([features, future_features], dim=1)
                branches.append(future_state)
            # one_step: predictions of frames 1..M+K-1; the last K forecasts are the future's
            nll = self.head_loss(inputs, one_step[:, m - 1 :], features[:, m - 1 :])
            decoupling = decoupling_term(state, *branches)
        detail = lost_detail(batch, cfg)
        if detail is not None:  # what the served mean adds: each frame's detail onto the forecast made after reading it
            one_step = one_step + detail[:, : one_step.size(1)]
            free_means = free_means + detail[:, m - 1 : m]
        truth = batch[:, 1:]
        mse_free = F.mse_loss(free_means.float(), truth[:, m - 1 :])
        mse_one_step = F.mse_loss(one_step.float(), truth)
        loss = cfg.mse_weight * (mse_free + mse_one_step) + cfg.nll_weight * nll
        logged = {}
        if cfg.ssim_weight:
            ssim_free = ssim_torch(truth[:, m - 1 :].flatten(0, 1), free_means.flatten(0, 1).clamp(0, 1))
            loss = loss + cfg.ssim_weight * (1.0 - ssim_free)
            logged["ssim"] = ssim_free.item()
        if decoupling is not None:
            loss = loss + cfg.decouple_weight * decoupling.float()
            logged["decoupling"] = decoupling.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        pixels = cfg.channels * cfg.resolution**2
        return {"loss": loss.item(), "mse": mse_free.item(), "mse_per_frame": mse_free.item() * pixels,
                "mse_one_step": mse_one_step.item(), "bits_per_dim": nll.item() / math.log(2.0),
                "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0],
                "true_context_probability": true_probability, **logged}

    def head_loss(self, batch: torch.Tensor, means: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on `head_frames` random future frames per clip of `batch` (model frames).
        means/features (B, K, ...) are the teacher-forced forecasts of future frames 0..K-1."""
        cfg = self.config
        b, m = batch.size(0), cfg.context_frames
        picks = torch.rand(b, cfg.horizon).argsort(dim=1)[:, : cfg.head_frames].to(batch.device)
        rows = torch.arange(b, device=batch.device)[:, None]

        def picked(x: torch.Tensor, offset: int = 0) -> torch.Tensor:  # (B, T, ...) -> (B*n, ...)
            return x[rows, picks + offset].flatten(0, 1)

        return head_nll(self.model, picked(features), picked(means), picked(batch, m - 1), picked(batch, m))


# --- data --------------------------------------------------------------------------------


def load_clips(manifest_path: str | Path, max_rows: int | None = None) -> dict:
    """Train and held-out clips (N, T, H, W, C) uint8 from a video shard manifest, with each
    clip's source path ("train_sources", "heldout_sources"); with `max_rows`, at most that many of each."""
    from corpora.readers import read_split  # the training side only: a registered model never reads shards

    split = read_split(manifest_path, "clips", [FRAMES, "source_path"], max_rows=max_rows)
    out = {}
    for name in ("train", "heldout"):
        out[name] = split[name][FRAMES]
        out[f"{name}_sources"] = [str(s) for s in split[name]["source_path"]]
    return out


def training_clips(manifest_path: str | Path, config: VideoRnnConfig, loader: LoaderConfig) -> Rows:
    """The training clips at the config's channels and resolution as the family's rows, in memory
    or streamed as `loader` decides (corpora.readers.training_rows)."""
    from corpora.readers import training_rows

    return training_rows(manifest_path, "clips", [FRAMES], loader,
                         convert={FRAMES: lambda clips: prepare_clips(clips, config.channels, config.resolution)})


def manifest_fps(manifest_path: str | Path) -> float:
    """The frame rate the corpus was resampled to: its ingest config, as the manifest records it."""
    from corpora.ingest import load_manifest

    manifest = load_manifest(Path(manifest_path))
    fps = ((manifest or {}).get("config") or {}).get("fps")
    if fps is None:
        raise ValueError(f"{manifest_path}: the manifest records no frame rate (config.fps): not a video corpus?")
    return float(fps)


# --- export for the registry -------------------------------------------------------------


def choose_examples(config: VideoRnnConfig, clips_uint8, sources: list[str], count: int = EXAMPLE_CONTEXTS) -> np.ndarray:
    """Up to `count` contexts (n, M, H, W, C) uint8 at the config's channels and resolution, from
    clips (N, T, ...): the first clip of each source in turn, then the others in order, so that
    the examples show different videos where there are several."""
    firsts: dict[str, int] = {}
    for index, source in enumerate(sources):
        firsts.setdefault(source, index)
    first = set(firsts.values())
    order = [*firsts.values(), *(i for i in range(len(sources)) if i not in first)]
    chosen = np.asarray(clips_uint8)[order[:count], : config.context_frames]
    return prepare_clips(chosen, config.channels, config.resolution)


def export_bundle(family: VideoRnnFamily, step: int | None = None, example_contexts: np.ndarray | None = None,
                  fps: float | None = None) -> dict:
    """What a registered model needs, as tensors and plain values (torch.load(weights_only=True)):
    with `example_contexts` (uint8 (n, M, H, W, C)) a request may leave out its context, and `fps`
    is the frame rate of the corpus the model was trained on."""
    state = {k: v.detach().cpu() for k, v in family.model.state_dict().items()}
    bundle = {"format": BUNDLE_FORMAT, "config": family.config.to_dict(), "state_dict": state, "step": step}
    if example_contexts is not None:
        cfg = family.config
        examples = np.asarray(example_contexts)
        expected = (cfg.context_frames, cfg.resolution, cfg.resolution, cfg.channels)
        if examples.dtype != np.uint8 or examples.ndim != 5 or examples.shape[1:] != expected:
            raise ValueError(f"example contexts must be uint8 (n, {', '.join(map(str, expected))}), "
                             f"not {examples.dtype} {examples.shape}")
        bundle["example_contexts"] = torch.from_numpy(np.ascontiguousarray(examples))
    if fps is not None:
        bundle["fps"] = float(fps)
    return bundle


def benchmark_family(manifest: Path, profile: str) -> Callable[[int], tuple[VideoRnnFamily, VideoRnnConfig]]:
    """(steps) -> a fresh (family, config) of the profile on the manifest's training clips, as
    `run_training` builds it; the data is read once (bench/gpu.py)."""
    clips = load_clips(manifest)["train"]

    def make(steps: int):
        config = VideoRnnConfig.profile(profile, steps=steps)
        return VideoRnnFamily(config, clips), config

    return make


# --- the shared entry point's run (python -m models.train --family video-rnn) ----------------


def run_training(request, run):
    """Train on the manifest's training clips, then compare with copy-last-frame on the held-out ones."""
    from models.train import TrainingOutcome

    loader = request.loader_config()
    clips = load_clips(run.manifest, max_rows=loader.eval_rows)  # what the metrics and examples read
    if len(clips["train"]) == 0 or len(clips["heldout"]) == 0:
        raise ValueError(f"the video corpus has {len(clips['train'])} train and {len(clips['heldout'])} held-out "
                         "clips; both are needed (raise video_corpus's heldout_percent, or add videos)")
    config = VideoRnnConfig.from_dict(request.model_config)
    family = VideoRnnFamily(config, training_clips(run.manifest, config, loader))
    if request.init_from:  # an older format's weights are a start, though format 1's read 8-bit frames
        family.model.load_state_dict(load_model(load_bundle(request.init_from, WARM_START_FORMATS)).state_dict())
        run.report.log(f"starting from the weights in {request.init_from}")
    result = run.fit(family, config, request)
    if not run.distributed.is_main:
        return None
    examples = choose_examples(config, clips["heldout"], clips["heldout_sources"])
    bundle = save_bundle(export_bundle(family, step=result.step, example_contexts=examples,
                                       fps=manifest_fps(run.manifest)), run.run_dir / "bundle.pt")
    report = evaluate(load_model(bundle), clips["heldout"])
    metric = CHAMPION_RULE.metric
    summary = {  # every number CHAMPION_RULE reads, and the rest of the mean row of the table
        metric: report["score_vs_copy_last"],
        "heldout_mse": report["model_mean"]["mse"], "heldout_ssim": report["model_mean"]["ssim"],
        "heldout_psnr": report["model_mean"]["psnr"], "baseline_mse": report["baseline_mean"]["mse"],
        "baseline_ssim": report["baseline_mean"]["ssim"], "baseline_psnr": report["baseline_mean"]["psnr"],
        "bits_per_dim": report["bits_per_dim"] if report["bits_per_dim"] is not None else float("nan"),
    }
    return TrainingOutcome(
        bundle=str(bundle), checkpoint=str(result.checkpoint), step=result.step, resumed_from=result.resumed_from,
        train_seconds=result.seconds, score=summary[metric], summary=summary,
        report_markdown=format_table(report),
        details={"heldout_clips": report["clips"], "beats_baseline_at": report["beats_baseline_at"],
                 "score_vs_copy_last_by_horizon": report["score_by_horizon"],
                 "beats_baseline_at_every_horizon": len(report["beats_baseline_at"]) == len(report["horizons"]),
                 "mse_below_baseline_at": report["mse_below_baseline_at"]},
    )
