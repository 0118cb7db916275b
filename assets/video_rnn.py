"""Video generation: a ConvLSTM forecaster with a PixelCNN head on the video shards, registered
as `video-rnn`, and a gallery of held-out continuations next to the truth.
Lineage: video_corpus -> video_rnn -> video_gallery."""
import html
from pathlib import Path

import dagster as dg
import numpy as np

from assets.gallery_site import write_cover
from assets.ingest import video_corpus
from assets.training import (
    champion_check_result, champion_check_spec, deadline, latest_metadata, lineage_metadata, load_champion,
    log_metrics, log_params, log_training_data, promote, register_bundle, run_folder_name, thumbnail_markdown,
)
from corpora.atomic import atomic_write_bytes, atomic_write_text
from corpora.hashing import sha256_json
from corpora.ingest import load_manifest
from corpora.video import write_video
from models import video_metrics
from models.trainer import fit
from models.video_pyfunc import VideoRnnPyfunc
from models.video_rnn import (
    PROFILES, VideoRnnConfig, VideoRnnFamily, export_bundle, load_clips, load_model, predict, save_bundle,
)
from resources.compute import ComputeResource
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource

GROUP = "video_rnn"
MODEL_NAME = EXPERIMENT = "video-rnn"
CODE_VERSION = "video-rnn-1"
GALLERY_CODE_VERSION = "video-gallery-1"
METRIC = "heldout_mse"  # mean over the horizons of the per-frame summed squared error; lower is better
PYFUNC_REQUIREMENTS = ["torch==2.13.0", "numpy", "pandas", "mlflow==3.17.2"]
FPS = 10.0  # the corpus' frame rate (corpora.video.VideoCorpusConfig.fps)
GALLERY_SEED = 0


class VideoRnnTrainConfig(dg.Config):
    profile: str = "demo"  # one of models.video_rnn.PROFILES: demo, cpu-long, gpu
    steps: int = 0  # 0: the profile's
    batch_size: int = 0  # 0: the profile's
    max_minutes: float = 0.0  # stop (and register) after this long; 0: no limit
    start_from: str = "fresh"  # "fresh", or "champion": continue from the champion's weights

    def rnn_config(self, seed: int) -> VideoRnnConfig:
        if self.profile not in PROFILES:
            raise dg.Failure(f"unknown profile {self.profile!r}; choose one of {sorted(PROFILES)}")
        overrides = {"seed": seed, **({"steps": self.steps} if self.steps else {}),
                     **({"batch_size": self.batch_size} if self.batch_size else {})}
        return VideoRnnConfig.profile(self.profile, **overrides)


def video_clips(storage: StorageResource) -> tuple[Path, dict, dict]:
    path = storage.shards_dir("video") / "manifest.json"
    manifest = load_manifest(path)
    if manifest is None:
        raise dg.Failure(f"no video corpus at {path}: materialize video_corpus first")
    clips = load_clips(path)
    if len(clips["train"]) == 0 or len(clips["heldout"]) == 0:
        raise dg.Failure(f"the video corpus has {len(clips['train'])} train and {len(clips['heldout'])} held-out "
                         "clips; both are needed (raise video_corpus's heldout_percent, or add videos)")
    return path, manifest, clips


@dg.asset(
    group_name=GROUP, deps=[video_corpus], code_version=CODE_VERSION, kinds={"pytorch", "mlflow"}, pool="gpu",
    check_specs=[champion_check_spec("video_rnn", METRIC)],
    description="ConvLSTM encoder-forecaster with a gated PixelCNN head (exact bits/dim, pixel-by-pixel sampling), "
    "trained on the video shards, compared with copy-last-frame on held-out clips, registered as `video-rnn`.",
)
def video_rnn(
    context: dg.AssetExecutionContext, config: VideoRnnTrainConfig, storage: StorageResource,
    compute: ComputeResource, mlflow: MlflowRegistry,
) -> dg.MaterializeResult:
    manifest_path, manifest, clips = video_clips(storage)
    device = compute.configure_torch()
    model_config = config.rnn_config(compute.seed)
    config_hash = sha256_json(model_config.to_dict())
    champion = load_champion(mlflow, MODEL_NAME) if config.start_from == "champion" else None
    champion_version = str(champion[1].version) if champion else None
    run_dir = storage.checkpoints_dir("video_rnn") / run_folder_name(
        manifest["version"], config_hash, config.start_from, champion_version)
    tags = mlflow.lineage_tags(dagster_run_id=context.run.run_id, asset_key="video_rnn", code_version=CODE_VERSION,
                               data_version=manifest["version"], config_hash=config_hash)
    with mlflow.start_run(EXPERIMENT, run_name=f"video-rnn {context.run.run_id[:8]}", tags=tags) as run:
        client, run_id = mlflow.client(), run.info.run_id
        log_params(client, run_id, {**model_config.to_dict(), "profile": config.profile, "start_from": config.start_from})
        log_training_data(client, run_id, "video_corpus", manifest_path, manifest["version"],
                          f'{{"train_clips": {len(clips["train"])}, "heldout_clips": {len(clips["heldout"])}}}')
        family = VideoRnnFamily(model_config, clips["train"])
        if champion is not None:
            family.model.load_state_dict(champion[0].model.state_dict())
            context.log.info(f"continuing from champion version {champion_version}")

        def log(step: int, values: dict) -> None:
            context.log.info(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
            log_metrics(client, run_id, values, step)

        result = fit(family, model_config.trainer_config(), run_dir, device=device, log=log,
                     should_stop=deadline(config.max_minutes), checkpoint_extra={"config": model_config.to_dict()})
        bundle_path = save_bundle(export_bundle(family, step=result.step), run_dir / "bundle.pt")
        report = video_metrics.evaluate(load_model(bundle_path), clips["heldout"])
        score = report["model_mean"]["mse"]
        summary = {
            METRIC: score, "heldout_ssim": report["model_mean"]["ssim"], "heldout_psnr": report["model_mean"]["psnr"],
            "baseline_mse": report["baseline_mean"]["mse"], "baseline_ssim": report["baseline_mean"]["ssim"],
            "bits_per_dim": report["bits_per_dim"] if report["bits_per_dim"] is not None else float("nan"),
        }
        log_metrics(client, run_id, summary, result.step)
        table = video_metrics.format_table(report)
        client.log_text(run_id, table, "metrics_report.md")
        version, _ = register_bundle(mlflow, run_id, MODEL_NAME, VideoRnnPyfunc(), bundle_path, PYFUNC_REQUIREMENTS)
        promotion = promote(mlflow, MODEL_NAME, METRIC, version, score, higher_is_better=False)

    context.log.info(f"registered {MODEL_NAME} version {version}; {promotion['decision']}")
    horizons = len(report["horizons"])
    return dg.MaterializeResult(
        metadata={
            **lineage_metadata(mlflow, MODEL_NAME, version, run_id, context),
            "start_from": f"champion version {champion_version}" if champion_version else "fresh",
            "steps": result.step,
            "resumed_from_step": result.resumed_from,
            "train_seconds": round(result.seconds, 1),
            **{k: dg.MetadataValue.float(float(v)) for k, v in summary.items()},
            "heldout_clips": report["clips"],
            "beats_baseline_at": dg.MetadataValue.json(report["beats_baseline_at"]),
            "beats_baseline_at_every_horizon": len(report["beats_baseline_at"]) == horizons,
            "metrics_table": dg.MetadataValue.md(table),
            "bundle": dg.MetadataValue.path(str(bundle_path)),
            "corpus_data_version": manifest["version"],
        },
        data_version=dg.DataVersion(f"{MODEL_NAME}/{version}"),
        check_results=[champion_check_result(promotion)],
    )


class VideoGalleryConfig(dg.Config):
    clips: int = 3  # held-out clips shown, each as MP4 and GIF: context | truth | mean prediction
    sampled_clips: int = 1  # of those, how many also get a continuation sampled pixel by pixel (slow on CPU)


@dg.asset(
    group_name=GROUP, deps=[video_rnn], code_version=GALLERY_CODE_VERSION, kinds={"html"},
    automation_condition=dg.AutomationCondition.eager(),
    description="Held-out clips continued by the video_rnn version this run registered: MP4 (H.264) and GIF of "
    "context | truth | prediction, a per-horizon error plot, under data/galleries/video-rnn/<version>/.",
)
def video_gallery(
    context: dg.AssetExecutionContext, config: VideoGalleryConfig, storage: StorageResource,
    compute: ComputeResource, mlflow: MlflowRegistry,
) -> dg.MaterializeResult:
    compute.configure_torch()
    trained = latest_metadata(context, "video_rnn")
    version = str(trained["model_version"])
    pyfunc, model_version = mlflow.load_pyfunc_model(MODEL_NAME, version)
    model = pyfunc.unwrap_python_model().model
    _, manifest, clips = video_clips(storage)
    folder = storage.galleries_dir(MODEL_NAME) / version
    m, k = model.config.context_frames, model.config.horizon
    heldout, sources = clips["heldout"], clips["heldout_sources"]
    chosen = np.random.default_rng(GALLERY_SEED).permutation(len(heldout))[: config.clips]

    entries, preview = [], None
    for rank, index in enumerate(chosen):
        clip = heldout[index]
        modes = ["mean", "sample"] if rank < config.sampled_clips else ["mean"]
        for mode in modes:
            prediction = predict(model, clip[:m], horizon=k, mode=mode, seed=GALLERY_SEED)
            frames = video_metrics.side_by_side(clip[:m], clip[m : m + k], prediction)
            name = f"clip-{rank}-{mode}"
            write_video(folder / f"{name}.mp4", frames, FPS)
            atomic_write_bytes(folder / f"{name}.gif", video_metrics.write_gif(None, frames, FPS))
            entries.append({"name": name, "source": sources[index], "mode": mode})
            preview = frames[-1] if preview is None else preview
    report = video_metrics.evaluate(model, heldout, with_bits_per_dim=False)
    atomic_write_bytes(folder / "error_by_horizon.png", video_metrics.error_plot_png(report))

    lineage = {
        "model": f"{MODEL_NAME} version {version}", "mlflow run": model_version.run_id,
        "shard data version": manifest["version"], "git commit": model_version.tags.get("git_commit", "unknown"),
        "dagster run": context.run.run_id,
    }
    write_cover(folder, [("video", f"{entries[0]['name']}.mp4"), ("img", "error_by_horizon.png")])
    index = folder / "index.html"
    atomic_write_text(index, gallery_html(f"{MODEL_NAME} version {version}", lineage, entries,
                                          trained.get("metrics_table", "")))
    client = mlflow.client()
    for name in [f"{entries[0]['name']}.mp4", "error_by_horizon.png"]:
        client.log_artifact(model_version.run_id, str(folder / name), artifact_path="gallery")
    return dg.MaterializeResult(metadata={
        "index": dg.MetadataValue.path(str(index)),
        "model_version": version,
        "videos": len(entries),
        "preview": thumbnail_markdown(preview),
    })


def gallery_html(title: str, lineage: dict, entries: list[dict], metrics_table: str) -> str:
    """index.html with <video> elements (H.264 MP4; the GIF beside each for viewers without
    H.264); every string that came from input is escaped."""
    e = html.escape
    lineage_rows = "".join(f"<tr><th>{e(k)}</th><td><code>{e(str(v))}</code></td></tr>" for k, v in lineage.items())
    clips = "".join(
        f'<figure><figcaption>{e(entry["source"])}: context | truth | prediction ({e(entry["mode"])})</figcaption>'
        f'<video controls muted loop preload="metadata" src="{e(entry["name"])}.mp4"></video> '
        f'<img src="{e(entry["name"])}.gif" alt="the same clip as a GIF"></figure>' for entry in entries)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:75em}} video,img{{image-rendering:pixelated;height:160px}}
th{{text-align:left;padding-right:1em}}</style></head>
<body><h1>{e(title)}</h1>
<table>{lineage_rows}</table>
<h2>Held-out clips</h2><p>While the context plays, all three panels show it; then the middle panel is the truth
and the right one the model's continuation ("mean": the forecaster's prediction; "sample": drawn pixel by pixel
from the PixelCNN head).</p>{clips}
<h2>Error by horizon</h2><img src="error_by_horizon.png" alt="MSE and SSIM per future step, model and copy-last-frame"
style="height:auto;max-width:100%">
<h2>Metrics</h2><pre>{e(metrics_table)}</pre>
</body></html>
"""


VIDEO_ASSETS = [video_rnn, video_gallery]
