"""Video generation: a ConvLSTM forecaster with a PixelCNN head on the video shards, registered
as `video-rnn`, and a gallery of held-out continuations next to the truth.
Lineage: video_corpus -> video_rnn -> video_gallery."""
import html

import dagster as dg
import numpy as np

from assets.gallery_site import gallery_lineage, gallery_page, write_cover
from assets.ingest import video_corpus
from assets.training import (
    FamilyRegistration, champion_check_spec, corpus_manifest, latest_metadata, thumbnail_markdown,
    train_and_register, trained_result,
)
from corpora.atomic import atomic_write_bytes, atomic_write_text
from corpora.video import write_video
from models import video_metrics
from models.train import TrainingRequest
from models.video_pyfunc import VideoRnnPyfunc
from models.video_rnn import CHAMPION_METRIC, CHAMPION_RULE, PROFILES, VideoRnnConfig, load_clips, predict
from resources.compute import ComputeResource
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource
from resources.trainer import TrainerLauncher

GROUP = "video_rnn"
MODEL_NAME = EXPERIMENT = "video-rnn"
CODE_VERSION = "video-rnn-2"  # 2: the model reads quantized frames (bundle format /2), OpenSTL's SSIM, the score rule
GALLERY_CODE_VERSION = "video-gallery-2"  # 2: the error plot's SSIM is OpenSTL's (data_range 2)
METRIC = CHAMPION_METRIC  # score_vs_copy_last: MSE and 1 - SSIM against copy-last-frame, averaged; lower is better
FAMILY = FamilyRegistration(
    asset_name="video_rnn", model_name=MODEL_NAME, code_version=CODE_VERSION, rule=CHAMPION_RULE,
    python_model=VideoRnnPyfunc, pip_requirements=("torch==2.13.0", "numpy", "pandas", "mlflow==3.17.2"),
    corpus="video_corpus",
)
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


@dg.asset(
    group_name=GROUP, deps=[video_corpus], code_version=CODE_VERSION, kinds={"pytorch", "mlflow"}, pool="gpu",
    check_specs=[champion_check_spec("video_rnn", CHAMPION_RULE)],
    description="ConvLSTM encoder-forecaster with a gated PixelCNN head (exact bits/dim, pixel-by-pixel sampling), "
    "trained on the video shards, compared with copy-last-frame on held-out clips (MSE, SSIM, PSNR as OpenSTL "
    "computes them), registered as `video-rnn`; champion by score_vs_copy_last with a held-out SSIM guard.",
)
def video_rnn(
    context: dg.AssetExecutionContext, config: VideoRnnTrainConfig, storage: StorageResource,
    compute: ComputeResource, mlflow: MlflowRegistry, trainer: TrainerLauncher,
) -> dg.MaterializeResult:
    manifest_path, manifest = corpus_manifest(storage, "video", "video_corpus")
    request = TrainingRequest(family=MODEL_NAME, model_config=config.rnn_config(compute.seed).to_dict(),
                              max_minutes=config.max_minutes, **compute.training_settings())
    trained = train_and_register(context, FAMILY, request, manifest_path, manifest, config.start_from,
                                 {"profile": config.profile}, storage, trainer, mlflow)
    return trained_result(context, FAMILY, trained, manifest, mlflow)


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
    manifest_path, manifest = corpus_manifest(storage, "video", "video_corpus")
    clips = load_clips(manifest_path)
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

    lineage = gallery_lineage(MODEL_NAME, version, model_version, manifest["version"], context.run.run_id)
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
    clips = "".join(
        f'<figure><figcaption>{e(entry["source"])}: context | truth | prediction ({e(entry["mode"])})</figcaption>'
        f'<video controls muted loop preload="metadata" src="{e(entry["name"])}.mp4"></video> '
        f'<img src="{e(entry["name"])}.gif" alt="the same clip as a GIF"></figure>' for entry in entries)
    body = f"""<h2>Held-out clips</h2><p>While the context plays, all three panels show it; then the middle panel is the truth
and the right one the model's continuation ("mean": the forecaster's prediction; "sample": drawn pixel by pixel
from the PixelCNN head).</p>{clips}
<h2>Error by horizon</h2><img src="error_by_horizon.png" alt="MSE and SSIM per future step, model and copy-last-frame"
style="height:auto;max-width:100%">"""
    return gallery_page(title, lineage, body, metrics_table,
                        style="body{max-width:75em} video,img{image-rendering:pixelated;height:160px}")


VIDEO_ASSETS = [video_rnn, video_gallery]
