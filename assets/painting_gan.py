"""Painting generation: a StyleGAN2-lite on random crops of the painting corpus, registered as
`painting-gan`, and a gallery with style mixing, a truncation sweep and style transfer.
Lineage: painting_corpus -> painting_gan -> painting_gallery."""
import html

import dagster as dg
import numpy as np
import torch

from assets.gallery_site import gallery_lineage, gallery_page, write_cover
from assets.ingest import painting_corpus
from assets.training import (
    FamilyRegistration, champion_check_spec, corpus_manifest, latest_metadata, thumbnail_markdown,
    train_and_register, trained_result,
)
from corpora.atomic import atomic_write_bytes, atomic_write_text
from corpora.shards import png_bytes
from models import style_transfer
from models.painting_gan import (
    CHAMPION_METRIC, CHAMPION_RULE, PROFILES, PaintingGanConfig, load_generator, load_pictures, num_style_layers, sample,
    style_mixing_grid, truncation_sweep,
)
from models.painting_pyfunc import PaintingGanPyfunc
from models.train import TrainingRequest
from resources.compute import ComputeResource
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource
from resources.trainer import TrainerLauncher

GROUP = "painting_gan"
MODEL_NAME = EXPERIMENT = "painting-gan"
CODE_VERSION = "painting-gan-2"
GALLERY_CODE_VERSION = "painting-gallery-1"
METRIC = CHAMPION_METRIC  # KID on the random CNN's style statistics against real crops; lower is better
FAMILY = FamilyRegistration(
    asset_name="painting_gan", model_name=MODEL_NAME, code_version=CODE_VERSION, rule=CHAMPION_RULE, python_model=PaintingGanPyfunc,
    pip_requirements=("torch==2.13.0", "numpy", "pandas", "mlflow==3.17.2"), corpus="painting_corpus",
)
GALLERY_SEED, GALLERY_SAMPLES, GALLERY_PSI = 0, 24, 0.7
MIXING_SEEDS, SWEEP_SEEDS, SWEEP_PSIS = 4, 4, (0.0, 0.25, 0.5, 0.75, 1.0)


class PaintingGanTrainConfig(dg.Config):
    profile: str = "demo"  # one of models.painting_gan.PROFILES: demo, cpu-long, gpu
    steps: int = 0  # 0: the profile's
    batch_size: int = 0  # 0: the profile's
    max_minutes: float = 0.0  # stop (and register) after this long; 0: no limit
    start_from: str = "fresh"  # "fresh", or "champion": continue from the champion's weights
    eval_samples: int = 256

    def gan_config(self, seed: int) -> PaintingGanConfig:
        if self.profile not in PROFILES:
            raise dg.Failure(f"unknown profile {self.profile!r}; choose one of {sorted(PROFILES)}")
        overrides = {"seed": seed, **({"steps": self.steps} if self.steps else {}),
                     **({"batch_size": self.batch_size} if self.batch_size else {})}
        return PaintingGanConfig.profile(self.profile, **overrides)


@dg.asset(
    group_name=GROUP, deps=[painting_corpus], code_version=CODE_VERSION, kinds={"pytorch", "mlflow"}, pool="gpu",
    check_specs=[champion_check_spec("painting_gan", CHAMPION_RULE)],
    description="StyleGAN2-lite (mapping network, modulated convolutions, noise, style mixing, R1, DiffAugment) "
    "trained on random crops of the painting corpus, registered in MLflow as `painting-gan`.",
)
def painting_gan(
    context: dg.AssetExecutionContext, config: PaintingGanTrainConfig, storage: StorageResource,
    compute: ComputeResource, mlflow: MlflowRegistry, trainer: TrainerLauncher,
) -> dg.MaterializeResult:
    manifest_path, manifest = corpus_manifest(storage, "painting", "painting_corpus")
    request = TrainingRequest(family=MODEL_NAME, model_config=config.gan_config(compute.seed).to_dict(),
                              options={"eval_samples": config.eval_samples}, max_minutes=config.max_minutes,
                              **compute.training_settings())
    trained = train_and_register(context, FAMILY, request, manifest_path, manifest, config.start_from,
                                 {"profile": config.profile}, storage, trainer, mlflow)
    generator = load_generator(trained.report.outcome.bundle)
    preview = _grid(sample(generator, 8, seed=GALLERY_SEED, truncation_psi=GALLERY_PSI))
    return trained_result(context, FAMILY, trained, manifest, mlflow, {"samples": thumbnail_markdown(preview)})


class PaintingGalleryConfig(dg.Config):
    feature_network: str = "random"  # style transfer's features: "random" CNN, or the image family's "classifier"
    transfer_steps: int = style_transfer.DEMO.steps
    transfer_size: int = style_transfer.DEMO.size
    triptychs: int = 2


def _classifier_state(context, feature_network: str) -> dict | None:
    if feature_network != "classifier":
        return None
    weights = latest_metadata(context, "image_classifier")["weights"]
    return torch.load(weights, map_location="cpu", weights_only=True)["model"]


@dg.asset(
    group_name=GROUP, deps=[painting_gan], code_version=GALLERY_CODE_VERSION, kinds={"html"},
    automation_condition=dg.AutomationCondition.eager(),
    description="Sample grid, style-mixing grid, truncation sweep and style-transfer triptychs (content, style, "
    "result) of the painting_gan version this run registered, under data/galleries/painting-gan/<version>/.",
)
def painting_gallery(
    context: dg.AssetExecutionContext, config: PaintingGalleryConfig, storage: StorageResource,
    compute: ComputeResource, mlflow: MlflowRegistry,
) -> dg.MaterializeResult:
    compute.configure_torch()
    trained = latest_metadata(context, "painting_gan")
    version = str(trained["model_version"])
    model, model_version = mlflow.load_pyfunc_model(MODEL_NAME, version)
    generator = model.unwrap_python_model().generator
    manifest_path, manifest = corpus_manifest(storage, "painting", "painting_corpus")
    pictures = load_pictures(manifest_path)["all"]
    folder = storage.galleries_dir(MODEL_NAME) / version

    seeds = range(GALLERY_SEED, GALLERY_SEED + MIXING_SEEDS)
    crossover = max(1, num_style_layers(generator) // 2)
    grids = {
        "samples.png": _grid(sample(generator, GALLERY_SAMPLES, seed=GALLERY_SEED, truncation_psi=GALLERY_PSI)),
        "style_mixing.png": style_mixing_grid(generator, list(seeds), [s + MIXING_SEEDS for s in seeds], crossover),
        "truncation.png": truncation_sweep(generator, list(range(SWEEP_SEEDS)), list(SWEEP_PSIS)),
    }
    for name, picture in grids.items():
        atomic_write_bytes(folder / name, png_bytes(_upscale(picture)))

    transfer_config = style_transfer.StyleTransferConfig(
        feature_network=config.feature_network, steps=config.transfer_steps, size=config.transfer_size,
        seed=compute.seed)
    classifier_state = _classifier_state(context, config.feature_network)
    rng = np.random.default_rng(compute.seed)
    transfers = []
    for index in range(min(config.triptychs, len(pictures) // 2)):
        content, style = pictures[rng.choice(len(pictures), 2, replace=False)]
        result = style_transfer.transfer(content, style, transfer_config, classifier_state)
        name = f"style-transfer-{index}.png"
        atomic_write_bytes(folder / name, png_bytes(style_transfer.triptych(content, style, result)))
        transfers.append({"file": name, "network": result.feature_network, "seconds": result.seconds,
                          "style_loss": (result.style_losses[0], result.style_losses[-1])})

    lineage = gallery_lineage(MODEL_NAME, version, model_version, manifest["version"], context.run.run_id)
    write_cover(folder, [("img", "samples.png"), ("img", "style_mixing.png")])
    index = folder / "index.html"
    atomic_write_text(index, gallery_html(f"{MODEL_NAME} version {version}", lineage, crossover, transfers,
                                          trained.get("metrics_table", "")))
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


def _grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    from models.painting_gan import image_grid

    rows = [list(images[i:i + columns]) for i in range(0, len(images), columns)]
    return image_grid(rows)


def gallery_html(title: str, lineage: dict, crossover: int, transfers: list[dict], metrics_table: str) -> str:
    """index.html; every string that came from input is escaped."""
    e = html.escape
    triptychs = "".join(
        f'<figure><img src="{e(t["file"])}" alt="content, style, result"><figcaption>content | style | result; '
        f'features: <code>{e(t["network"])}</code>; style loss {t["style_loss"][0]:.3g} -> {t["style_loss"][1]:.3g} '
        f'in {t["seconds"]:.0f} s</figcaption></figure>' for t in transfers)
    body = f"""<h2>Samples</h2><p>Truncation psi {GALLERY_PSI}.</p><img src="samples.png" alt="samples">
<h2>Style mixing</h2><p>Top row and left column are the sources; each cell takes the coarse styles (layers
below {crossover}) from its row's source and the fine styles from its column's.</p>
<img src="style_mixing.png" alt="style mixing">
<h2>Truncation sweep</h2><p>One row per seed; psi {", ".join(str(p) for p in SWEEP_PSIS)} from left to right
(psi 0 is the mean style).</p><img src="truncation.png" alt="truncation sweep">
<h2>Style transfer</h2>{triptychs or "<p>The corpus has fewer than two pictures.</p>"}"""
    return gallery_page(title, lineage, body, metrics_table,
                        style="body{max-width:70em} img{image-rendering:pixelated;max-width:100%}")


PAINTING_ASSETS = [painting_gan, painting_gallery]
