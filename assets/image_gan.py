"""Image generation: the feature classifier for metrics, the GAN, its registration, the gallery.

Lineage: image_corpus -> image_classifier -> image_gan -> image_gallery. Each step reads what
the step before it recorded (a manifest, a weights file, a registered version), never "the
newest file in a folder".
"""

import html
import time

import dagster as dg
import numpy as np
import torch

from assets.ingest import image_corpus
from assets.gallery_site import gallery_lineage, gallery_page, write_cover
from assets.training import (
    FamilyRegistration, champion_check_spec, corpus_manifest, latest_metadata, thumbnail_markdown,
    train_and_register, trained_result,
)
from corpora.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from corpora.hashing import sha256_file, sha256_json
from corpora.preview import contact_sheet
from corpora.shards import png_bytes
from models import metrics
from models.image_gan import (
    CHAMPION_METRIC, CHAMPION_RULE, PROFILES, ImageGanConfig, interpolate, load_generator, load_image_split, sample,
)
from models.pyfunc import ImageGanPyfunc
from models.train import TrainingRequest
from resources.compute import ComputeResource
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource
from resources.trainer import TrainerLauncher

GROUP = "image_gan"
MODEL_NAME = EXPERIMENT = "image-gan"
CLASSIFIER_CODE_VERSION = "image-classifier-2"
GAN_CODE_VERSION = "image-gan-2"
GALLERY_CODE_VERSION = "image-gallery-1"
METRIC = CHAMPION_METRIC  # lower is better; decides the champion
GALLERY_SEED = 0
FAMILY = FamilyRegistration(
    asset_name="image_gan", model_name=MODEL_NAME, code_version=GAN_CODE_VERSION, rule=CHAMPION_RULE, python_model=ImageGanPyfunc,
    pip_requirements=("torch==2.13.0", "numpy", "pandas", "mlflow==3.17.2"), corpus="image_corpus",
)


# --- the feature classifier ----------------------------------------------------------------


class ImageClassifierConfig(dg.Config):
    epochs: int = metrics.ClassifierConfig.epochs
    batch_size: int = metrics.ClassifierConfig.batch_size
    lr: float = metrics.ClassifierConfig.lr


@dg.asset(
    group_name=GROUP, deps=[image_corpus], code_version=CLASSIFIER_CODE_VERSION, kinds={"pytorch"},
    description="A CNN trained on the image corpus. Its 128-d embedding stands in for Inception's "
    "features (no weights can be downloaded here): the GAN's fid_classifier, kid_classifier, precision "
    "and recall; its predictions give label_accuracy.",
)
def image_classifier(
    context: dg.AssetExecutionContext, config: ImageClassifierConfig, storage: StorageResource, compute: ComputeResource
) -> dg.MaterializeResult:
    manifest_path, manifest = corpus_manifest(storage, "images", "image_corpus")
    data = load_image_split(manifest_path)
    if not data.class_names:
        raise dg.Failure("the image corpus has no labels (class folders): the feature classifier needs them")
    device = compute.configure_torch()
    classifier_config = metrics.ClassifierConfig(config.epochs, config.batch_size, config.lr, compute.seed)
    key = sha256_json([CLASSIFIER_CODE_VERSION, manifest["version"], config.model_dump(), compute.seed])[:16]
    path = storage.checkpoints_dir("image_classifier") / f"classifier-{key}.pt"
    if path.exists():  # same data, code and config: the weights would come out the same
        saved = torch.load(path, map_location="cpu", weights_only=True)
        accuracy, timing = saved["heldout_accuracy"], {}
        context.log.info(f"reusing {path} (heldout accuracy {accuracy:.4f})")
    else:
        started = time.perf_counter()
        model, accuracy = metrics.train_classifier(
            data.train_images, data.train_labels, data.heldout_images, data.heldout_labels,
            classifier_config, device=device,
        )
        # in the metadata only: a time in the file would change its hash, the asset's data version
        timing = {"train_seconds": dg.MetadataValue.float(round(time.perf_counter() - started, 1))}
        state = {"model": model.cpu().state_dict(), "class_names": data.class_names,
                 "channels": int(data.train_images.shape[3]), "heldout_accuracy": accuracy}
        atomic_write(path, lambda file: torch.save(state, file))
    return dg.MaterializeResult(
        metadata={
            "heldout_accuracy": dg.MetadataValue.float(float(accuracy)),
            **timing,
            "classes": len(data.class_names),
            "train_images": len(data.train_images),
            "heldout_images": len(data.heldout_images),
            "weights": dg.MetadataValue.path(str(path)),
            "corpus_data_version": manifest["version"],
        },
        data_version=dg.DataVersion(sha256_file(path)),
    )


# --- the GAN --------------------------------------------------------------------------------


class ImageGanTrainConfig(dg.Config):
    profile: str = "demo"  # one of models.image_gan.PROFILES: demo, cpu-long, gpu
    architecture: str = "dcgan"  # or "wgan-gp"
    steps: int = 0  # 0: the profile's
    batch_size: int = 0  # 0: the profile's
    max_minutes: float = 0.0  # stop (and register) after this long; 0: no limit
    start_from: str = "fresh"  # "fresh", or "champion": continue from the champion's generator

    def gan_config(self, seed: int) -> ImageGanConfig:
        """The profile with this config's overrides; the run fills in resolution, channels and
        classes from the data."""
        if self.profile not in PROFILES:
            raise dg.Failure(f"unknown profile {self.profile!r}; choose one of {sorted(PROFILES)}")
        overrides = {"architecture": self.architecture, "seed": seed,
                     **({"steps": self.steps} if self.steps else {}),
                     **({"batch_size": self.batch_size} if self.batch_size else {})}
        return ImageGanConfig.profile(self.profile, **overrides)


@dg.asset(
    group_name=GROUP, deps=[image_corpus, image_classifier], code_version=GAN_CODE_VERSION,
    kinds={"pytorch", "mlflow"}, pool="gpu",
    check_specs=[champion_check_spec("image_gan", CHAMPION_RULE)],
    description="Class-conditional DCGAN or WGAN-GP with an EMA generator, trained on the image "
    "corpus, registered in MLflow as `image-gan` (alias challenger; champion when it beats the current one).",
)
def image_gan(
    context: dg.AssetExecutionContext, config: ImageGanTrainConfig, storage: StorageResource,
    compute: ComputeResource, mlflow: MlflowRegistry, trainer: TrainerLauncher,
) -> dg.MaterializeResult:
    manifest_path, manifest = corpus_manifest(storage, "images", "image_corpus")
    classifier = latest_metadata(context, "image_classifier")
    request = TrainingRequest(family=MODEL_NAME, model_config=config.gan_config(compute.seed).to_dict(),
                              options={"classifier": str(classifier["weights"])}, max_minutes=config.max_minutes,
                              **compute.training_settings())
    trained = train_and_register(context, FAMILY, request, manifest_path, manifest, config.start_from,
                                 {"profile": config.profile}, storage, trainer, mlflow)
    mlflow.client().set_model_version_tag(MODEL_NAME, trained.version, "classifier_weights",
                                          sha256_file(classifier["weights"]))
    generator = load_generator(trained.report.outcome.bundle)
    return trained_result(context, FAMILY, trained, manifest, mlflow, {
        "classifier_heldout_accuracy": dg.MetadataValue.float(float(classifier["heldout_accuracy"])),
        "samples": thumbnail_markdown(contact_sheet(sample(generator, 32, seed=GALLERY_SEED), cell=28)),
    })


# --- the gallery ----------------------------------------------------------------------------


@dg.asset(
    group_name=GROUP, deps=[image_gan], code_version=GALLERY_CODE_VERSION, kinds={"html"},
    automation_condition=dg.AutomationCondition.eager(),
    description="Sample grid (a row per class), latent interpolation and nearest-training-image pairs "
    "of the image_gan version this run registered, with its lineage, under data/galleries/image-gan/<version>/.",
)
def image_gallery(
    context: dg.AssetExecutionContext, storage: StorageResource, compute: ComputeResource, mlflow: MlflowRegistry
) -> dg.MaterializeResult:
    compute.configure_torch()
    gan = latest_metadata(context, "image_gan")
    version = str(gan["model_version"])
    model, model_version = mlflow.load_pyfunc_model(MODEL_NAME, version)
    generator = model.unwrap_python_model().generator
    manifest_path, manifest = corpus_manifest(storage, "images", "image_corpus")
    data = load_image_split(manifest_path)
    folder = storage.galleries_dir(MODEL_NAME) / version
    classes = generator.class_names or [""]
    per_class = 8
    rows = [sample(generator, per_class, seed=GALLERY_SEED + i, labels=i if generator.class_names else None)
            for i in range(len(classes))]
    grid = contact_sheet(np.concatenate(rows), columns=per_class, cell=56)
    strip = contact_sheet(interpolate(generator, GALLERY_SEED, GALLERY_SEED + 1, steps=10, label_a=0), columns=10, cell=56)
    probes = sample(generator, 8, seed=GALLERY_SEED + 100)
    nearest = metrics.memorization(probes, data.train_images, seed=compute.seed)
    pairs = contact_sheet(
        np.stack([image for pair in zip(probes, data.train_images[nearest["nearest_index"]]) for image in pair]),
        columns=2, cell=56,
    )
    pictures = {"samples.png": grid, "interpolation.png": strip, "nearest_neighbours.png": pairs}
    for name, picture in pictures.items():
        atomic_write_bytes(folder / name, png_bytes(picture))
    lineage = gallery_lineage(MODEL_NAME, version, model_version, manifest["version"], context.run.run_id)
    write_cover(folder, [("img", "samples.png"), ("img", "interpolation.png")])
    index = folder / "index.html"
    atomic_write_text(index, gallery_html(f"{MODEL_NAME} version {version}", lineage, classes, pictures,
                                          nearest["near_copy"], gan.get("metrics_table", "")))
    client = mlflow.client()
    for name in pictures:
        client.log_artifact(model_version.run_id, str(folder / name), artifact_path="gallery")
    return dg.MaterializeResult(
        metadata={
            "index": dg.MetadataValue.path(str(index)),
            "model_version": version,
            "near_copies_among_probes": int(nearest["near_copy_count"]),
            "preview": thumbnail_markdown(contact_sheet(np.concatenate(rows)[:: per_class // 2][:20], cell=28)),
        },
    )


def gallery_html(title: str, lineage: dict, class_names, pictures: dict, near_copy, metrics_table: str) -> str:
    """index.html: every string that came from input (class names, paths, tags) is escaped."""
    classes = ", ".join(html.escape(name) for name in class_names)
    body = f"""<h2>Samples</h2><p>One row per class: {classes}</p><img src="samples.png" alt="samples">
<h2>Latent interpolation</h2><img src="interpolation.png" alt="interpolation">
<h2>Nearest training images</h2>
<p>Each sample beside its nearest training image (pixel distance). Near copies among these: {int(np.sum(near_copy))}.</p>
<img src="nearest_neighbours.png" alt="nearest neighbours">"""
    return gallery_page(title, lineage, body, metrics_table,
                        style="body{max-width:60em} img{image-rendering:pixelated;max-width:100%}")


IMAGE_GAN_ASSETS = [image_classifier, image_gan, image_gallery]
