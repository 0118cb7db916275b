"""Image generation: the feature classifier for metrics, the GAN, its registration, the gallery.

Lineage: image_corpus -> image_classifier -> image_gan -> image_gallery. Each step reads what
the step before it recorded (a manifest, a weights file, a registered version), never "the
newest file in a folder".
"""

import html
import time

from collections.abc import Iterator

import dagster as dg
import numpy as np
import torch

from assets.ingest import CORPUS_ASSET_OF
from assets.gallery_page import figure, gallery_lineage, gallery_page, provenance, write_cover
from assets.training import (
    champion_check_spec, corpus_manifest, thumbnail_markdown, POINTERS, train_and_register, trained_result,
    TrainingRunConfig,
)
from common.atomic import atomic_write_bytes, atomic_write_text
from common.hashing import sha256_file, sha256_json
from corpora.preview import contact_sheet
from corpora.shards import png_bytes
from models.classifier import ClassifierConfig, save_classifier, train_classifier
from models.distances import memorization
from models.image_gan import FAMILY
from models.image_gan.config import ImageGanConfig
from models.image_gan.data import load_image_split
from models.image_gan.sampling import interpolate, load_generator, sample
from models.train import TrainingRequest
from provenance.credentials import Provenance, sign_folder
from resources.compute import ComputeResource
from resources.human_gate import HumanGateResource
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource
from resources.trainer import TrainerLauncher

GROUP = FAMILY.key
CODE_VERSION = "image-gan-6"  # the training asset's; 5: the demo profile's Adam betas are 0.0/0.9; 6: channels_last on CPU
CLASSIFIER_CODE_VERSION = "image-classifier-3"  # 3: two epochs
GALLERY_CODE_VERSION = "image-gallery-3"  # 3: signed media, rateable cover, licences
GALLERY_SEED = 0
CORPUS_ASSET = CORPUS_ASSET_OF[FAMILY.corpus]  # image_corpus, which writes data/shards/images/


# --- the feature classifier ----------------------------------------------------------------


class ImageClassifierConfig(dg.Config):
    epochs: int = ClassifierConfig.epochs
    batch_size: int = ClassifierConfig.batch_size
    lr: float = ClassifierConfig.lr


@dg.asset(
    group_name=GROUP, deps=[CORPUS_ASSET], code_version=CLASSIFIER_CODE_VERSION, kinds={"pytorch"},
    io_manager_key=POINTERS,
    description="A CNN trained on the image corpus. Its 128-d embedding stands in for Inception's "
    "features (no weights can be downloaded here): the GAN's fid_classifier, kid_classifier, precision "
    "and recall; its predictions give label_accuracy.",
)
def image_classifier(
    context: dg.AssetExecutionContext, config: ImageClassifierConfig, storage: StorageResource, compute: ComputeResource
) -> dg.Output:
    manifest_path, manifest = corpus_manifest(storage, FAMILY.corpus)
    data = load_image_split(manifest_path)
    if not data.class_names:
        raise dg.Failure("the image corpus has no labels (class folders): the feature classifier needs them")
    device = compute.configure_torch()
    classifier_config = ClassifierConfig(config.epochs, config.batch_size, config.lr, compute.seed)
    key = sha256_json([CLASSIFIER_CODE_VERSION, manifest["version"], config.model_dump(), compute.seed])[:16]
    path = storage.checkpoints_dir("image_classifier") / f"classifier-{key}.pt"
    if path.exists():  # same data, code and config: the weights would come out the same
        saved = torch.load(path, map_location="cpu", weights_only=True)
        accuracy, timing = saved["heldout_accuracy"], {}
        context.log.info(f"reusing {path} (heldout accuracy {accuracy:.4f})")
    else:
        started = time.perf_counter()
        model, accuracy = train_classifier(
            data.train_images, data.train_labels, data.heldout_images, data.heldout_labels,
            classifier_config, device=device,
        )
        # in the metadata only: a time in the file would change its hash, the asset's data version
        timing = {"train_seconds": dg.MetadataValue.float(round(time.perf_counter() - started, 1))}
        save_classifier(model, path, data.class_names, accuracy)
    pointer = {"weights": str(path), "heldout_accuracy": float(accuracy), "corpus_data_version": manifest["version"]}
    return dg.Output(
        pointer,
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


class ImageGanTrainConfig(TrainingRunConfig):
    """The profiles are ImageGanConfig.PROFILES; the run fills in resolution, channels and classes
    from the data."""
    architecture: str = ""  # "": the profile's; else a key of models.image_gan.config.ARCHITECTURE_DEFAULTS


@dg.asset(
    group_name=GROUP, deps=[CORPUS_ASSET], code_version=CODE_VERSION,
    kinds={"pytorch", "mlflow"}, pool="gpu",
    io_manager_key=POINTERS,
    check_specs=[champion_check_spec(FAMILY.key, FAMILY.rule)],
    description="Class-conditional DCGAN or WGAN-GP with an EMA generator, trained on the image "
    f"corpus, registered in MLflow as `{FAMILY.name}` (alias challenger; champion when it beats the current one).",
)
def image_gan(
    context: dg.AssetExecutionContext, image_classifier: dict, config: ImageGanTrainConfig, storage: StorageResource,
    compute: ComputeResource, mlflow: MlflowRegistry, trainer: TrainerLauncher,
    human_gate: HumanGateResource,
) -> Iterator:
    manifest_path, manifest = corpus_manifest(storage, FAMILY.corpus)
    classifier = image_classifier  # the weights this run trained, or the latest materialization's
    architecture = {"architecture": config.architecture} if config.architecture else {}
    request = TrainingRequest(family=FAMILY.name,
                              model_config=config.family_config(ImageGanConfig, compute.seed, **architecture).to_dict(),
                              options={"classifier": str(classifier["weights"])}, **config.request_settings(compute))
    trained = train_and_register(context, FAMILY, CODE_VERSION, request, manifest_path, manifest, config.start_from,
                                 {"profile": config.profile}, storage, trainer, mlflow,
                                 human_gate)
    mlflow.client().set_model_version_tag(FAMILY.name, trained.version, "classifier_weights",
                                          sha256_file(classifier["weights"]))
    generator = load_generator(trained.report.outcome.bundle)
    yield from trained_result(context, FAMILY, trained, manifest, mlflow, {
        "classifier_heldout_accuracy": dg.MetadataValue.float(float(classifier["heldout_accuracy"])),
        "samples": thumbnail_markdown(contact_sheet(sample(generator, 32, seed=GALLERY_SEED), cell=28)),
    })


# --- the gallery ----------------------------------------------------------------------------


@dg.asset(
    group_name=GROUP, code_version=GALLERY_CODE_VERSION, kinds={"html"},
    automation_condition=dg.AutomationCondition.eager(),
    description="Sample grid (a row per class), latent interpolation and nearest-training-image pairs "
    f"of the {FAMILY.key} version this run registered, with its lineage, under data/galleries/{FAMILY.name}/<version>/.",
)
def image_gallery(
    context: dg.AssetExecutionContext, image_gan: dict, storage: StorageResource, compute: ComputeResource, mlflow: MlflowRegistry
) -> dg.MaterializeResult:
    compute.configure_torch()
    version = image_gan["version"]  # what this run's training registered, or the latest materialization's
    model, model_version = mlflow.load_pyfunc_model(FAMILY.name, version)
    generator = model.unwrap_python_model().generator
    manifest_path, manifest = corpus_manifest(storage, FAMILY.corpus)
    data = load_image_split(manifest_path)
    folder = storage.galleries_dir(FAMILY.name) / version
    classes = generator.class_names or [""]
    per_class = 8
    seeds = {"samples.png": [GALLERY_SEED + i for i in range(len(classes))],  # one per row
             "interpolation.png": [GALLERY_SEED, GALLERY_SEED + 1], "nearest_neighbours.png": [GALLERY_SEED + 100]}
    rows = [sample(generator, per_class, seed=seed, labels=i if generator.class_names else None)
            for i, seed in enumerate(seeds["samples.png"])]
    grid = contact_sheet(np.concatenate(rows), columns=per_class, cell=56)
    strip = contact_sheet(interpolate(generator, *seeds["interpolation.png"], steps=10, label_a=0), columns=10, cell=56)
    probes = sample(generator, 8, seed=seeds["nearest_neighbours.png"][0])
    nearest = memorization(probes, data.train_images, seed=compute.seed)
    pairs = contact_sheet(
        np.stack([image for pair in zip(probes, data.train_images[nearest["nearest_index"]]) for image in pair]),
        columns=2, cell=56,
    )
    pictures = {"samples.png": grid, "interpolation.png": strip, "nearest_neighbours.png": pairs}
    for name, picture in pictures.items():
        atomic_write_bytes(folder / name, png_bytes(picture))
    sign_folder(folder, Provenance.of_model_version(model_version, [GALLERY_SEED]), storage.root, seeds=seeds,
                composites=["nearest_neighbours.png"])
    lineage = gallery_lineage(FAMILY.name, version, model_version, image_gan["corpus_data_version"], context.run.run_id)
    write_cover(folder, [("img", "samples.png"), ("img", "interpolation.png")],
                {name: provenance(lineage, seeds[name]) for name in seeds}, {name: seeds[name][0] for name in seeds})
    index = folder / "index.html"
    atomic_write_text(index, gallery_html(f"{FAMILY.name} version {version}", lineage, classes, seeds,
                                          nearest["near_copy"], image_gan["metrics_table"]))
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


def gallery_html(title: str, lineage: dict, class_names, seeds: dict[str, list[int]], near_copy, metrics_table: str) -> str:
    """index.html: `seeds` by picture file; every string that came from input (class names, paths, tags) is escaped."""
    classes = ", ".join(html.escape(name) for name in class_names)

    def picture(name: str, alt: str) -> str:
        return figure(name, alt, provenance(lineage, seeds[name]))

    body = f"""<h2>Samples</h2><p>One row per class: {classes}</p>{picture("samples.png", "samples, one row per class")}
<h2>Latent interpolation</h2>{picture("interpolation.png", "latent interpolation between two seeds")}
<h2>Nearest training images</h2>
<p>Each sample beside its nearest training image (pixel distance). Near copies among these: {int(np.sum(near_copy))}.</p>
{picture("nearest_neighbours.png", "samples, each beside its nearest training image")}"""
    return gallery_page(title, lineage, body, metrics_table,
                        style="body{max-width:60em} img{image-rendering:pixelated;max-width:100%}", family=FAMILY.name)


TRAINING_ASSET = image_gan
GALLERY_ASSET = image_gallery
ASSETS = [image_classifier, image_gan, image_gallery]
