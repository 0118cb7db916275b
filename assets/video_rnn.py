"""Video generation: a recurrent forecaster with a PixelCNN head on the video shards, registered
as `video-rnn`, and a gallery of held-out continuations next to the truth.
Lineage: video_corpus -> video_rnn -> video_gallery."""
import html

from collections.abc import Iterator

import dagster as dg

from assets.gallery_page import figure, gallery_lineage, gallery_page, lightbox_picture, provenance, write_cover
from assets.ingest import CORPUS_ASSET_OF
from assets.training import (
    champion_check_spec, corpus_manifest, thumbnail_markdown, POINTERS, train_and_register, trained_result,
    TrainingRunConfig,
)
from common.atomic import atomic_write_bytes, atomic_write_text
from corpora.video import write_video
from models.train import TrainingRequest
from models.video_rnn import FAMILY
from models.video_rnn.config import VideoRnnConfig
from models.video_rnn.gallery import error_plot_png, gallery_clips, side_by_side, write_gif
from models.video_rnn.metrics import evaluate, evaluate_by_kind, format_table, source_kind
from models.video_rnn.sampling import predict
from models.video_rnn.training import load_clips
from provenance.credentials import Provenance, sign_folder
from resources.compute import ComputeResource
from resources.human_gate import HumanGateResource
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource
from resources.trainer import TrainerLauncher

# 3: one package; the bundle (format /3) keeps example contexts and the corpus' frame rate;
# 4: the demo profile at about a fifth of the CPU cost (2 x 32, batch 4, SSIM loss);
# 5: the demo's mean keeps the last frame's detail below the quantization (keep_detail);
# 6: so does cpu-long's
CODE_VERSION = "video-rnn-6"
GALLERY_CODE_VERSION = "video-gallery-5"  # 5: captions with version and seed, larger views, signed media, rateable cover, licences
GALLERY_SEED = 0


class VideoRnnTrainConfig(TrainingRunConfig):
    """The shared fields only; the profiles are VideoRnnConfig.PROFILES."""


@dg.asset(
    group_name=FAMILY.key, deps=[CORPUS_ASSET_OF[FAMILY.corpus]], code_version=CODE_VERSION, kinds={"pytorch", "mlflow"},
    pool="gpu", io_manager_key=POINTERS,
    check_specs=[champion_check_spec(FAMILY.key, FAMILY.rule)],
    description="ConvLSTM (or, by profile, PredRNN-V2) forecaster with a gated PixelCNN head (exact bits/dim, "
    "pixel-by-pixel sampling), "
    "trained on the video shards, compared with copy-last-frame on held-out clips (MSE, SSIM, PSNR as OpenSTL "
    "computes them), registered as `video-rnn`; champion by score_vs_copy_last with a held-out SSIM guard.",
)
def video_rnn(
    context: dg.AssetExecutionContext, config: VideoRnnTrainConfig, storage: StorageResource,
    compute: ComputeResource, mlflow: MlflowRegistry, trainer: TrainerLauncher,
    human_gate: HumanGateResource,
) -> Iterator:
    manifest_path, manifest = corpus_manifest(storage, FAMILY.corpus)
    request = TrainingRequest(family=FAMILY.name, model_config=config.family_config(VideoRnnConfig, compute.seed).to_dict(),
                              **config.request_settings(compute))
    trained = train_and_register(context, FAMILY, CODE_VERSION, request, manifest_path, manifest, config.start_from,
                                 {"profile": config.profile}, storage, trainer, mlflow,
                                 human_gate)
    yield from trained_result(context, FAMILY, trained, manifest, mlflow)


class VideoGalleryConfig(dg.Config):
    clips: int = 4  # held-out clips shown (distinct, each kind of footage), each as MP4 and GIF: context | truth | mean
    sampled_clips: int = 1  # of those, how many also get a continuation sampled pixel by pixel (slow on CPU)


@dg.asset(
    group_name=FAMILY.key, code_version=GALLERY_CODE_VERSION, kinds={"html"},
    automation_condition=dg.AutomationCondition.eager(),
    description="Held-out clips continued by the video_rnn version this run registered: MP4 (H.264) and GIF of "
    "context | truth | prediction at the training corpus' frame rate, a per-horizon error plot, under "
    "data/galleries/video-rnn/<version>/.",
)
def video_gallery(
    context: dg.AssetExecutionContext, video_rnn: dict, config: VideoGalleryConfig, storage: StorageResource,
    compute: ComputeResource, mlflow: MlflowRegistry,
) -> dg.MaterializeResult:
    compute.configure_torch()
    version = video_rnn["version"]  # what this run's training registered, or the latest materialization's
    pyfunc, model_version = mlflow.load_pyfunc_model(FAMILY.name, version)
    python_model = pyfunc.unwrap_python_model()
    model = python_model.model
    manifest_path, manifest = corpus_manifest(storage, FAMILY.corpus)
    fps = trained_fps(python_model.fps, manifest, video_rnn)
    clips = load_clips(manifest_path)
    folder = storage.galleries_dir(FAMILY.name) / version
    m, k = model.config.context_frames, model.config.horizon
    heldout, sources = clips["heldout"], clips["heldout_sources"]
    chosen = gallery_clips(sources, config.clips, GALLERY_SEED)

    entries, preview = [], None
    for rank, index in enumerate(chosen):
        clip = heldout[index]
        modes = ["mean", "sample"] if rank < config.sampled_clips else ["mean"]
        for mode in modes:
            prediction = predict(model, clip[:m], horizon=k, mode=mode, seed=GALLERY_SEED)
            frames = side_by_side(clip[:m], clip[m : m + k], prediction)
            name = f"clip-{rank}-{mode}"
            write_video(folder / f"{name}.mp4", frames, fps)
            atomic_write_bytes(folder / f"{name}.gif", write_gif(None, frames, fps))
            entries.append({"name": name, "source": sources[index], "kind": source_kind(sources[index]), "mode": mode})
            preview = frames[-1] if preview is None else preview
    report = evaluate(model, heldout, with_bits_per_dim=False)
    atomic_write_bytes(folder / "error_by_horizon.png", error_plot_png(report))
    sign_folder(folder, Provenance.of_model_version(model_version, [GALLERY_SEED]), storage.root,
                composites=["clip-*"], skip=["error_by_horizon.png"])  # the clips show the truth beside the prediction
    tables = [video_rnn["metrics_table"]] + [f"Held-out {kind} clips only:\n\n{format_table(by_kind)}"
                                             for kind, by_kind in evaluate_by_kind(model, heldout, sources).items()]

    lineage = gallery_lineage(FAMILY.name, version, model_version, video_rnn["corpus_data_version"], context.run.run_id)
    first = f"{entries[0]['name']}.mp4"
    write_cover(folder, [("video", first), ("img", "error_by_horizon.png")],
                {first: f"{entries[0]['source']}: {clip_caption(lineage, entries[0]['mode'])}"}, seeds={first: GALLERY_SEED})
    index = folder / "index.html"
    atomic_write_text(index, gallery_html(f"{FAMILY.name} version {version}", lineage, entries, "\n\n".join(tables)))
    client = mlflow.client()
    for name in [f"{entries[0]['name']}.mp4", "error_by_horizon.png"]:
        client.log_artifact(model_version.run_id, str(folder / name), artifact_path="gallery")
    return dg.MaterializeResult(metadata={
        "index": dg.MetadataValue.path(str(index)),
        "model_version": version,
        "videos": len(entries),
        "clips": dg.MetadataValue.json([{"source": entry["source"], "kind": entry["kind"], "mode": entry["mode"]}
                                        for entry in entries]),
        "fps": fps,
        "preview": thumbnail_markdown(preview),
    })


def trained_fps(bundle_fps: float | None, manifest: dict, trained: dict) -> float:
    """The frame rate of the corpus the model was trained on: its bundle records it (format 3); for
    an older bundle, the current manifest's only while it is still the one the model was trained on."""
    if bundle_fps is not None:
        return float(bundle_fps)
    if manifest["version"] == trained["corpus_data_version"]:
        return float(manifest["config"]["fps"])
    raise dg.Failure(f"{FAMILY.name} version {trained['version']} records no frame rate and the video corpus "
                     "has changed since it was trained: retrain video_rnn")


def clip_caption(lineage: dict, mode: str) -> str:
    """Which model version made a continuation; a sampled one also names its seed (the mean is deterministic)."""
    return provenance(lineage, [GALLERY_SEED]) + ", sampled" if mode == "sample" else f"{lineage['model']}, mean"


def gallery_html(title: str, lineage: dict, entries: list[dict], metrics_table: str) -> str:
    """index.html with <video> elements (H.264 MP4; the GIF beside each, which opens larger on click, for
    viewers without H.264); every string that came from input is escaped."""
    e = html.escape
    clips = "".join(
        f'<figure><video controls muted loop preload="metadata" src="{e(entry["name"])}.mp4"></video> '
        f'{lightbox_picture(entry["name"] + ".gif", "the same clip as a GIF")}'
        f'<figcaption>{e(entry["source"])} ({e(entry["kind"])}): context | truth | prediction. '
        f'{e(clip_caption(lineage, entry["mode"]))}</figcaption></figure>' for entry in entries)
    body = f"""<h2>Held-out clips</h2><p>While the context plays, all three panels show it; then the middle panel is the truth
and the right one the model's continuation ("mean": the forecaster's prediction; "sampled": drawn pixel by pixel
from the PixelCNN head).</p>{clips}
<h2>Error by horizon</h2>{figure("error_by_horizon.png", "MSE and SSIM per future step, model and copy-last-frame",
                                 lineage["model"])}"""
    return gallery_page(title, lineage, body, metrics_table,
                        style="body{max-width:75em} video,.zoom img{image-rendering:pixelated;height:160px}", family=FAMILY.name)


TRAINING_ASSET = video_rnn
GALLERY_ASSET = video_gallery
ASSETS = [video_rnn, video_gallery]
