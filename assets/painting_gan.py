"""Painting generation: a FastGAN (or a StyleGAN2-lite) on random crops of the painting corpus, registered as
`painting-gan`, and a gallery with style mixing, a truncation sweep and style transfer.
Lineage: painting_corpus -> painting_gan -> painting_gallery."""
import html

from collections.abc import Iterator

import dagster as dg
import numpy as np

from assets.gallery_page import figure, gallery_lineage, gallery_page, lightbox_picture, provenance, write_cover
from assets.ingest import CORPUS_ASSET_OF
from assets.training import (
    champion_check_spec, corpus_manifest, thumbnail_markdown, POINTERS, train_and_register, trained_result,
    TrainingRunConfig,
)
from common.atomic import atomic_write_bytes, atomic_write_text
from corpora.preview import contact_sheet
from corpora.readers import read_split
from corpora.shards import png_bytes
from models.classifier import load_classifier
from models.painting_gan import FAMILY, style_transfer
from models.painting_gan.config import PaintingGanConfig
from models.painting_gan.sampling import load_generator, num_style_layers, sample, style_mixing_grid, truncation_sweep
from models.train import TrainingRequest
from provenance.credentials import Provenance, sign_folder
from resources.compute import ComputeResource
from resources.human_gate import HumanGateResource
from resources.mlflow_registry import MlflowRegistry
from resources.pointers import pointer_of_this_run
from resources.storage import StorageResource
from resources.trainer import TrainerLauncher

GROUP = FAMILY.key
CODE_VERSION = "painting-gan-8"  # 6: batch 16, 600 steps; 7: noise inputs, blurred D; 8: channels_last on CPU
GALLERY_CODE_VERSION = "painting-gallery-4"  # 4: signed media, rateable cover, licences
GALLERY_SEED, GALLERY_SAMPLES, GALLERY_PSI = 0, 24, 0.7
MIXING_SEEDS, SWEEP_SEEDS, SWEEP_PSIS = 4, 4, (0.0, 0.25, 0.5, 0.75, 1.0)


class PaintingGanTrainConfig(TrainingRunConfig):
    """The profiles are PaintingGanConfig.PROFILES (demo: FastGAN at 64x64; stylegan2-demo)."""
    eval_samples: int = 256


@dg.asset(
    group_name=GROUP, deps=[CORPUS_ASSET_OF[FAMILY.corpus]], code_version=CODE_VERSION, kinds={"pytorch", "mlflow"},
    pool="gpu", io_manager_key=POINTERS,
    check_specs=[champion_check_spec(FAMILY.key, FAMILY.rule)],
    description="FastGAN at 64x64 by default (skip-layer excitation, self-supervised discriminator; profile "
    "stylegan2-demo: a StyleGAN2-lite) trained on random crops of the painting corpus, registered in MLflow as "
    "`painting-gan`.",
)
def painting_gan(
    context: dg.AssetExecutionContext, config: PaintingGanTrainConfig, storage: StorageResource,
    compute: ComputeResource, mlflow: MlflowRegistry, trainer: TrainerLauncher,
    human_gate: HumanGateResource,
) -> Iterator:
    manifest_path, manifest = corpus_manifest(storage, FAMILY.corpus)
    request = TrainingRequest(family=FAMILY.name, model_config=config.family_config(PaintingGanConfig, compute.seed).to_dict(),
                              options={"eval_samples": config.eval_samples}, **config.request_settings(compute))
    trained = train_and_register(context, FAMILY, CODE_VERSION, request, manifest_path, manifest, config.start_from,
                                 {"profile": config.profile}, storage, trainer, mlflow,
                                 human_gate)
    generator = load_generator(trained.report.outcome.bundle)
    preview = contact_sheet(sample(generator, 8, seed=GALLERY_SEED, truncation_psi=GALLERY_PSI), cell=None)
    yield from trained_result(context, FAMILY, trained, manifest, mlflow, {"samples": thumbnail_markdown(preview)})


class PaintingGalleryConfig(dg.Config):
    feature_network: str = "random"  # style transfer's features: "random" CNN, or "classifier" (image_classifier's weights)
    transfer_steps: int = style_transfer.DEMO.steps
    transfer_size: int = style_transfer.DEMO.size
    triptychs: int = 2


def _classifier_state(context, storage: StorageResource, feature_network: str) -> dict | None:
    """The image classifier's weights, when they define "style": those this run trained, else the latest."""
    if feature_network != "classifier":
        return None
    weights = pointer_of_this_run(context, storage.data_root, dg.AssetKey("image_classifier"))["weights"]
    return load_classifier(weights).state_dict()


@dg.asset(
    group_name=GROUP, code_version=GALLERY_CODE_VERSION, kinds={"html"},
    deps=["image_classifier"],  # its weights, only with feature_network: classifier
    automation_condition=dg.AutomationCondition.eager(),
    description="Sample grid, style-mixing grid, truncation sweep and style-transfer triptychs (content, style, "
    "result) of the painting_gan version this run registered, under data/galleries/painting-gan/<version>/.",
)
def painting_gallery(
    context: dg.AssetExecutionContext, painting_gan: dict, config: PaintingGalleryConfig, storage: StorageResource,
    compute: ComputeResource, mlflow: MlflowRegistry,
) -> dg.MaterializeResult:
    compute.configure_torch()
    version = painting_gan["version"]  # what this run's training registered, or the latest materialization's
    model, model_version = mlflow.load_pyfunc_model(FAMILY.name, version)
    generator = model.unwrap_python_model().generator
    manifest_path, manifest = corpus_manifest(storage, FAMILY.corpus)
    split = read_split(manifest_path, "images", ["pixels"])
    pictures = np.concatenate([split["train"]["pixels"], split["heldout"]["pixels"]])
    folder = storage.galleries_dir(FAMILY.name) / version

    column_seeds = list(range(GALLERY_SEED, GALLERY_SEED + MIXING_SEEDS))
    row_seeds = [seed + MIXING_SEEDS for seed in column_seeds]
    seeds = {"samples.png": [GALLERY_SEED], "style_mixing.png": column_seeds + row_seeds,
             "truncation.png": list(range(SWEEP_SEEDS))}
    crossover = max(1, num_style_layers(generator) // 2)
    grids = {
        "samples.png": contact_sheet(sample(generator, GALLERY_SAMPLES, seed=GALLERY_SEED, truncation_psi=GALLERY_PSI),
                                     cell=None),
        "style_mixing.png": _sheet(style_mixing_grid(generator, column_seeds, row_seeds, crossover)),
        "truncation.png": _sheet(truncation_sweep(generator, seeds["truncation.png"], list(SWEEP_PSIS))),
    }
    for name, picture in grids.items():
        atomic_write_bytes(folder / name, png_bytes(_upscale(picture)))

    transfer_config = style_transfer.StyleTransferConfig(
        feature_network=config.feature_network, steps=config.transfer_steps, size=config.transfer_size,
        seed=compute.seed)
    classifier_state = _classifier_state(context, storage, config.feature_network)
    rng = np.random.default_rng(compute.seed)
    transfers = []
    for index in range(min(config.triptychs, len(pictures) // 2)):
        content, style = pictures[rng.choice(len(pictures), 2, replace=False)]
        result = style_transfer.transfer(content, style, transfer_config, classifier_state)
        name = f"style-transfer-{index}.png"
        atomic_write_bytes(folder / name, png_bytes(style_transfer.triptych(content, style, result)))
        transfers.append({"file": name, "network": result.feature_network, "seconds": result.seconds,
                          "style_loss": (result.style_losses[0], result.style_losses[-1])})
    sign_folder(folder, Provenance.of_model_version(model_version, [GALLERY_SEED]), storage.root, seeds=seeds,
                composites=["style-transfer-*"])  # content and style paintings beside the transfer

    lineage = gallery_lineage(FAMILY.name, version, model_version, painting_gan["corpus_data_version"], context.run.run_id)
    write_cover(folder, [("img", "samples.png"), ("img", "style_mixing.png")],
                {name: provenance(lineage, seeds[name]) for name in seeds}, {name: seeds[name][0] for name in seeds})
    index = folder / "index.html"
    atomic_write_text(index, gallery_html(f"{FAMILY.name} version {version}", lineage, crossover, seeds, transfers,
                                          painting_gan["metrics_table"]))
    client = mlflow.client()
    for name in [*grids, *(t["file"] for t in transfers)]:
        client.log_artifact(model_version.run_id, str(folder / name), artifact_path="gallery")
    return dg.MaterializeResult(metadata={
        "index": dg.MetadataValue.path(str(index)),
        "model_version": version,
        "style_transfer_network": transfers[0]["network"] if transfers else "none",
        "style_loss_drop": dg.MetadataValue.json([round(t["style_loss"][0] / max(t["style_loss"][1], 1e-12), 2)
                                                  for t in transfers]),
        "preview": thumbnail_markdown(grids["style_mixing.png"]),
    })


def _upscale(picture: np.ndarray, minimum: int = 384) -> np.ndarray:
    """Nearest-neighbour enlargement so small samples are visible; whole factors keep pixels square."""
    factor = max(1, minimum // max(picture.shape[:2]))
    return picture.repeat(factor, axis=0).repeat(factor, axis=1)


def _sheet(rows: list[list[np.ndarray | None]]) -> np.ndarray:
    """Rows of one length of equal-sized cells (None: empty) as one picture, at the cells' own size."""
    return contact_sheet([image for row in rows for image in row], columns=max(len(row) for row in rows), cell=None)


def gallery_html(title: str, lineage: dict, crossover: int, seeds: dict[str, list[int]], transfers: list[dict],
                 metrics_table: str) -> str:
    """index.html, `seeds` by picture file; every string that came from input is escaped."""
    e = html.escape

    def picture(name: str, alt: str) -> str:
        return figure(name, alt, provenance(lineage, seeds[name]))

    triptychs = "".join(
        f'<figure>{lightbox_picture(t["file"], "content, style, result")}<figcaption>content | style | result; '
        f'features: <code>{e(t["network"])}</code>; style loss {t["style_loss"][0]:.3g} -> {t["style_loss"][1]:.3g} '
        f'in {t["seconds"]:.0f} s</figcaption></figure>' for t in transfers)
    body = f"""<h2>Samples</h2><p>Truncation psi {GALLERY_PSI}.</p>{picture("samples.png", "samples")}
<h2>Style mixing</h2><p>Top row and left column are the sources; each cell takes the coarse styles (layers
below {crossover}) from its column's source and the fine styles from its row's.</p>
{picture("style_mixing.png", "style mixing grid")}
<h2>Truncation sweep</h2><p>One row per seed; psi {", ".join(str(p) for p in SWEEP_PSIS)} from left to right
(psi 0 is the mean style).</p>{picture("truncation.png", "truncation sweep, one row per seed")}
<h2>Style transfer</h2>{triptychs or "<p>The corpus has fewer than two pictures.</p>"}"""
    return gallery_page(title, lineage, body, metrics_table,
                        style="body{max-width:70em} img{image-rendering:pixelated;max-width:100%}", family=FAMILY.name)


TRAINING_ASSET, GALLERY_ASSET = painting_gan, painting_gallery
ASSETS = [painting_gan, painting_gallery]
