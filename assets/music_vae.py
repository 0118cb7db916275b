"""Music creation: MusicVAE-style melody and 4-voice chorale models, registered as `music-vae`,
and an audio gallery. Lineage: midi_corpus -> music_vae -> music_gallery."""
import html
from pathlib import Path

from collections.abc import Iterator

import dagster as dg
import numpy as np

from assets.gallery_page import gallery_lineage, gallery_page, lightbox_picture, provenance, write_cover
from assets.ingest import CORPUS_ASSET_OF
from assets.training import (
    champion_check_spec, corpus_manifest, thumbnail_markdown, POINTERS, train_and_register, trained_result,
    TrainingRunConfig,
)
from common.atomic import atomic_write_bytes, atomic_write_text
from corpora.preview import contact_sheet
from corpora.shards import png_bytes
from models import midi_audio
from models.music_vae import FAMILY
from models.music_vae.config import KINDS, MusicVaeConfig
from models.music_vae.render import mel_spectrogram_image, pianoroll_image
from models.music_vae.sampling import (
    GALLERY_BARS,
    GALLERY_FORBIDS_CONSECUTIVES,
    GALLERY_TEMPERATURE,
    RHYTHM_TEMPERATURE,
    interpolate,
    sample,
)
from models.music_vae.tokens import tokens_to_midi_bytes
from models.music_vae.training import load_windows
from models.train import TrainingRequest
from provenance.credentials import Provenance, sign_folder
from resources.compute import ComputeResource
from resources.human_gate import HumanGateResource
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource
from resources.trainer import TrainerLauncher

GROUP = FAMILY.key
# the training asset's; 6: the registered model draws no consecutive fifths or octaves unless asked to;
# 7: nor hidden ones in the outer voices; 8: its rhythm at the model's own odds; 9: trained in the corpus's keys;
# 10: the demo with half the free bits
CODE_VERSION = "music-vae-10"
# 5: no consecutive fifths, octaves; 6: nor hidden ones; 7: the rhythm at the model's own odds
GALLERY_CODE_VERSION = "music-gallery-7"
GALLERY_SAMPLES, GALLERY_SEED, INTERPOLATION_STEPS = 4, 0, 5


class MusicVaeTrainConfig(TrainingRunConfig):
    """The profiles are MusicVaeConfig.PROFILES; max_minutes holds for each kind's model."""
    kinds: list[str] = ["chorale", "melody"]  # which models the registered bundle holds
    eval_samples: int = 256  # prior samples for the statistics the champion guard reads; fewer is noisier


@dg.asset(
    group_name=GROUP, deps=[CORPUS_ASSET_OF[FAMILY.corpus]], code_version=CODE_VERSION, kinds={"pytorch", "mlflow"},
    pool="gpu", io_manager_key=POINTERS,
    check_specs=[champion_check_spec(FAMILY.key, FAMILY.rule)],
    description="MusicVAE-style VAEs (BiLSTM encoder, LSTM decoder, scheduled sampling, KL annealing with "
    "free bits) over 2-bar melodies and 4-voice chorale windows, registered in MLflow as `music-vae`.",
)
def music_vae(
    context: dg.AssetExecutionContext, config: MusicVaeTrainConfig, storage: StorageResource,
    compute: ComputeResource, mlflow: MlflowRegistry, trainer: TrainerLauncher,
    human_gate: HumanGateResource,
) -> Iterator:
    if not config.kinds or not set(config.kinds) <= set(KINDS):
        raise dg.Failure(f"kinds must be a non-empty subset of {sorted(KINDS)}")
    manifest_path, manifest = corpus_manifest(storage, FAMILY.corpus)
    request = TrainingRequest(
        family=FAMILY.name, options={"eval_samples": config.eval_samples},
        model_config={kind: config.family_config(MusicVaeConfig, compute.seed, kind=kind).to_dict() for kind in config.kinds},
        **config.request_settings(compute),
    )
    trained = train_and_register(context, FAMILY, CODE_VERSION, request, manifest_path, manifest, config.start_from,
                                 {"profile": config.profile, "kinds": ",".join(config.kinds)}, storage, trainer, mlflow,
                                 human_gate)
    yield from trained_result(context, FAMILY, trained, manifest, mlflow)


@dg.asset(
    group_name=GROUP, code_version=GALLERY_CODE_VERSION, kinds={"html"},
    automation_condition=dg.AutomationCondition.eager(),
    description=f"{GALLERY_BARS}-bar samples of the music_vae version this run registered as .mid, rendered .wav, piano roll and "
    "mel spectrogram, plus an interpolation between two real chorale phrases, under data/galleries/music-vae/<version>/.",
)
def music_gallery(
    context: dg.AssetExecutionContext, music_vae: dict, storage: StorageResource, compute: ComputeResource, mlflow: MlflowRegistry,
) -> dg.MaterializeResult:
    compute.configure_torch()
    version = music_vae["version"]  # what this run's training registered, or the latest materialization's
    model, model_version = mlflow.load_pyfunc_model(FAMILY.name, version)
    models = model.unwrap_python_model().models
    manifest_path, manifest = corpus_manifest(storage, FAMILY.corpus)
    folder = storage.galleries_dir(FAMILY.name) / version

    entries, rolls = [], []
    for kind, kind_model in models.items():
        windows = sample(kind_model, GALLERY_SAMPLES, seed=GALLERY_SEED, temperature=GALLERY_TEMPERATURE, bars=GALLERY_BARS,
                         forbid_consecutives=GALLERY_FORBIDS_CONSECUTIVES)
        entries += [_write_piece(folder, f"{kind}-{i}", window) for i, window in enumerate(windows)]
        rolls += [pianoroll_image(window) for window in windows]
    interpolation = []
    if "chorale" in models:
        heldout = load_windows(manifest_path, "chorale")["heldout"]
        ends = heldout[np.random.default_rng(GALLERY_SEED).choice(len(heldout), 2, replace=False)]
        path = interpolate(models["chorale"], ends[0], ends[1], steps=INTERPOLATION_STEPS)
        interpolation = [_write_piece(folder, f"interpolation-{i}", window) for i, window in enumerate(path)]
    sign_folder(folder, Provenance.of_model_version(model_version, [GALLERY_SEED]), storage.root)

    lineage = gallery_lineage(FAMILY.name, version, model_version, music_vae["corpus_data_version"], context.run.run_id)
    write_cover(folder, [("img", entries[0]["roll"]), ("audio", entries[0]["wav"])],
                {entries[0]["roll"]: f'{entries[0]["name"]}: {provenance(lineage, [GALLERY_SEED])}'},
                {entries[0]["roll"]: GALLERY_SEED, entries[0]["wav"]: GALLERY_SEED})
    index = folder / "index.html"
    atomic_write_text(index, gallery_html(f"{FAMILY.name} version {version}", lineage, entries, interpolation,
                                          music_vae["metrics_table"]))
    client = mlflow.client()
    for entry in entries:
        client.log_artifact(model_version.run_id, str(folder / entry["wav"]), artifact_path="gallery")
    renderers = sorted({entry["renderer"] for entry in entries + interpolation})
    return dg.MaterializeResult(metadata={
        "index": dg.MetadataValue.path(str(index)),
        "model_version": version,
        "pieces": len(entries) + len(interpolation),
        "audio_renderer": ", ".join(renderers),
        "preview": thumbnail_markdown(contact_sheet(rolls, columns=4, cell=96)),
    })


def _write_piece(folder: Path, name: str, window: np.ndarray) -> dict:
    """One window as .mid, .wav (fluidsynth, else pretty_midi's synthesizer), piano roll and mel PNGs."""
    midi = tokens_to_midi_bytes(window)
    rendered = midi_audio.render(midi)
    files = {"mid": f"{name}.mid", "wav": f"{name}.wav", "roll": f"{name}-roll.png", "mel": f"{name}-mel.png"}
    atomic_write_bytes(folder / files["mid"], midi)
    atomic_write_bytes(folder / files["wav"], rendered.wav_bytes())
    atomic_write_bytes(folder / files["roll"], png_bytes(pianoroll_image(window)))
    atomic_write_bytes(folder / files["mel"], png_bytes(mel_spectrogram_image(rendered.audio, rendered.sample_rate)))
    return {"name": name, **files, "renderer": rendered.renderer, "seconds": rendered.seconds}


def gallery_html(title: str, lineage: dict, entries: list[dict], interpolation: list[dict], metrics_table: str) -> str:
    """index.html with <audio> players; every string that came from input is escaped."""
    e = html.escape

    def piece(entry: dict, origin: str) -> str:
        return (f'<figure><figcaption>{e(entry["name"])} ({entry["seconds"]:.1f} s, {e(entry["renderer"])};'
                f' {e(origin)}) <a href="{e(entry["mid"])}">.mid</a></figcaption>'
                f'<audio controls preload="none" src="{e(entry["wav"])}"></audio><br>'
                f'{lightbox_picture(entry["roll"], "piano roll")} {lightbox_picture(entry["mel"], "mel spectrogram")}'
                f"</figure>")

    sampled = provenance(lineage, [GALLERY_SEED])
    chosen = f"{lineage['model']}, phrases drawn with seed {GALLERY_SEED}"
    voice_leading = ("so that no two voices make consecutive fifths or octaves, nor the outer voices hidden ones (a "
                     "rule of the sampling: the model's own rate is the metrics table's <code>prior</code> row, the "
                     "phrases here its <code>gallery</code> row)" if GALLERY_FORBIDS_CONSECUTIVES
                     else "as the model gives them")
    body = f"""<h2>Samples</h2><p>{GALLERY_BARS}-bar phrases from the prior, their pitches drawn at temperature
{GALLERY_TEMPERATURE:g} and when each voice moves at {RHYTHM_TEMPERATURE:g} (the model's own odds),
{voice_leading}.</p>{''.join(piece(entry, sampled) for entry in entries)}
<h2>Interpolation between two held-out chorale phrases</h2>{''.join(piece(entry, chosen) for entry in interpolation)}"""
    return gallery_page(title, lineage, body, metrics_table,
                        style="body{max-width:70em} img{image-rendering:pixelated;height:96px}", family=FAMILY.name)


TRAINING_ASSET = music_vae
GALLERY_ASSET = music_gallery
ASSETS = [music_vae, music_gallery]
