"""Image generation: the feature classifier for metrics, the GAN, its registration, the gallery.

Lineage: image_corpus -> image_classifier -> image_gan -> image_gallery. Each step reads what
the step before it recorded (a manifest, a weights file, a registered version), never "the
newest file in a folder".
"""

import html
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import torch

from assets.ingest import image_corpus
from assets.gallery_site import write_cover
from assets.training import (
    champion_check_result, champion_check_spec, deadline, latest_metadata, lineage_metadata, load_champion,
    log_metrics, log_params, log_training_data, promote, register_bundle, run_folder_name, thumbnail_markdown,
)
from corpora.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from corpora.hashing import sha256_file, sha256_json
from corpora.ingest import load_manifest, shard_paths
from corpora.preview import contact_sheet
from corpora.shards import png_bytes, read_shards, tensors_from_table
from models import metrics
from models.image_gan import (
    ImageGanConfig, ImageGanFamily, PROFILES, export_bundle, interpolate, load_generator, sample, save_bundle,
)
from models.pyfunc import ImageGanPyfunc
from models.trainer import fit
from resources.compute import ComputeResource
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource

GROUP = "image_gan"
MODEL_NAME = EXPERIMENT = "image-gan"
CLASSIFIER_CODE_VERSION = "image-classifier-1"
GAN_CODE_VERSION = "image-gan-1"
GALLERY_CODE_VERSION = "image-gallery-1"
METRIC = "fid_classifier"  # lower is better; decides the champion
EVAL_SAMPLES = 1000
MEMORIZATION_SAMPLES = 256
GALLERY_SEED = 0
PYFUNC_REQUIREMENTS = ["torch==2.13.0", "numpy", "pandas", "mlflow==3.17.2"]


@dataclass
class ImageSplit:
    """The image corpus as the models see it: uint8 (N, H, W, C) tensors and class indices."""

    train_images: np.ndarray
    train_labels: np.ndarray
    heldout_images: np.ndarray
    heldout_labels: np.ndarray
    class_names: list[str]
    data_version: str
    manifest_path: Path


def load_image_split(storage: StorageResource) -> ImageSplit:
    manifest_path = storage.shards_dir("images") / "manifest.json"
    manifest = load_manifest(manifest_path)
    if manifest is None:
        raise FileNotFoundError(f"no image corpus at {manifest_path}: materialize image_corpus first")
    table = read_shards(shard_paths(manifest_path, "images"), columns=["pixels", "label", "split"])
    images = tensors_from_table(table, "pixels")
    names = [name if name is not None else "" for name in table["label"].to_pylist()]
    class_names = sorted(set(names) - {""})
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index.get(name, -1) for name in names], dtype=np.int64)
    heldout = np.array(table["split"].to_pylist()) == "heldout"
    return ImageSplit(
        images[~heldout], labels[~heldout], images[heldout], labels[heldout],
        class_names, manifest["version"], manifest_path,
    )


# --- the feature classifier ----------------------------------------------------------------


class ImageClassifierConfig(dg.Config):
    epochs: int = metrics.ClassifierConfig.epochs
    batch_size: int = metrics.ClassifierConfig.batch_size
    lr: float = metrics.ClassifierConfig.lr


@dg.asset(
    group_name=GROUP, deps=[image_corpus], code_version=CLASSIFIER_CODE_VERSION, kinds={"pytorch"},
    description="A small CNN trained on the image corpus. Its penultimate features stand in for "
    "Inception's (no weights can be downloaded here): the GAN's fid_classifier and kid_classifier.",
)
def image_classifier(
    context: dg.AssetExecutionContext, config: ImageClassifierConfig, storage: StorageResource, compute: ComputeResource
) -> dg.MaterializeResult:
    data = load_image_split(storage)
    if not data.class_names:
        raise dg.Failure("the image corpus has no labels (class folders): the feature classifier needs them")
    device = compute.configure_torch()
    classifier_config = metrics.ClassifierConfig(config.epochs, config.batch_size, config.lr, compute.seed)
    key = sha256_json([CLASSIFIER_CODE_VERSION, data.data_version, config.model_dump(), compute.seed])[:16]
    path = storage.checkpoints_dir("image_classifier") / f"classifier-{key}.pt"
    if path.exists():  # same data, code and config: the weights would come out the same
        saved = torch.load(path, map_location="cpu", weights_only=True)
        accuracy = saved["heldout_accuracy"]
        context.log.info(f"reusing {path} (heldout accuracy {accuracy:.4f})")
    else:
        model, accuracy = metrics.train_classifier(
            data.train_images, data.train_labels, data.heldout_images, data.heldout_labels,
            classifier_config, device=device,
        )
        state = {"model": model.cpu().state_dict(), "class_names": data.class_names,
                 "channels": int(data.train_images.shape[3]), "heldout_accuracy": accuracy}
        atomic_write(path, lambda file: torch.save(state, file))
    return dg.MaterializeResult(
        metadata={
            "heldout_accuracy": dg.MetadataValue.float(float(accuracy)),
            "classes": len(data.class_names),
            "train_images": len(data.train_images),
            "heldout_images": len(data.heldout_images),
            "weights": dg.MetadataValue.path(str(path)),
            "corpus_data_version": data.data_version,
        },
        data_version=dg.DataVersion(sha256_file(path)),
    )


def load_classifier(path: str | Path) -> metrics.FeatureClassifier:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = metrics.FeatureClassifier(saved["channels"], len(saved["class_names"]))
    model.load_state_dict(saved["model"])
    return model.eval()


# --- the GAN --------------------------------------------------------------------------------


class ImageGanTrainConfig(dg.Config):
    profile: str = "demo"  # one of models.image_gan.PROFILES: demo, cpu-long, gpu
    architecture: str = "dcgan"  # or "wgan-gp"
    steps: int = 0  # 0: the profile's
    batch_size: int = 0  # 0: the profile's
    max_minutes: float = 0.0  # stop (and register) after this long; 0: no limit
    start_from: str = "fresh"  # "fresh", or "champion": continue from the champion's generator

    def gan_config(self, data: ImageSplit, seed: int) -> ImageGanConfig:
        if self.profile not in PROFILES:
            raise dg.Failure(f"unknown profile {self.profile!r}; choose one of {sorted(PROFILES)}")
        overrides = {"architecture": self.architecture, "seed": seed,
                     "resolution": int(data.train_images.shape[1]), "channels": int(data.train_images.shape[3]),
                     "num_classes": len(data.class_names)}
        if self.steps:
            overrides["steps"] = self.steps
        if self.batch_size:
            overrides["batch_size"] = self.batch_size
        return ImageGanConfig.profile(self.profile, **overrides)


def evaluate(generator, data: ImageSplit, classifier, family_untrained, seed: int) -> dict:
    """The metric table (floor, ceiling, model), class coverage and memorization."""
    count = min(EVAL_SAMPLES, len(data.heldout_images))
    # Shards are in path order (class folders): a random subset, not the first rows, is the floor.
    heldout = data.heldout_images[np.sort(np.random.default_rng(seed).choice(len(data.heldout_images), count, replace=False))]
    samples = {
        "untrained_generator": sample(family_untrained, count, seed=seed),
        "model": sample(generator, count, seed=seed),
    }
    report = metrics.gan_report(classifier, data.train_images, heldout, samples,
                                num_classes=len(data.class_names), seed=seed)
    copies = metrics.memorization(samples["model"][:MEMORIZATION_SAMPLES], data.train_images, seed=seed)
    return {"table": report, "memorization": copies, "samples": samples["model"]}


@dg.asset(
    group_name=GROUP, deps=[image_corpus, image_classifier], code_version=GAN_CODE_VERSION,
    kinds={"pytorch", "mlflow"}, pool="gpu",
    check_specs=[champion_check_spec("image_gan", METRIC)],
    description="Class-conditional DCGAN or WGAN-GP with an EMA generator, trained on the image "
    "corpus, registered in MLflow as `image-gan` (alias challenger; champion when it beats the current one).",
)
def image_gan(
    context: dg.AssetExecutionContext, config: ImageGanTrainConfig, storage: StorageResource,
    compute: ComputeResource, mlflow: MlflowRegistry,
) -> dg.MaterializeResult:
    data = load_image_split(storage)
    device = compute.configure_torch()
    gan_config = config.gan_config(data, compute.seed)
    config_hash = sha256_json(gan_config.to_dict())
    champion = load_champion(mlflow, MODEL_NAME) if config.start_from == "champion" else None
    champion_version = str(champion[1].version) if champion else None
    run_dir = storage.checkpoints_dir("image_gan") / run_folder_name(data.data_version, config_hash, config.start_from,
                                                                     champion_version)
    classifier_meta = latest_metadata(context, "image_classifier")
    classifier = load_classifier(classifier_meta["weights"])

    tags = mlflow.lineage_tags(
        dagster_run_id=context.run.run_id, asset_key="image_gan", code_version=GAN_CODE_VERSION,
        data_version=data.data_version, config_hash=config_hash,
    )
    with mlflow.start_run(EXPERIMENT, run_name=f"image-gan {context.run.run_id[:8]}", tags=tags) as run:
        client = mlflow.client()
        run_id = run.info.run_id
        log_params(client, run_id, {**gan_config.to_dict(), "profile": config.profile, "start_from": config.start_from})
        log_training_data(client, run_id, "image_corpus", data.manifest_path, data.data_version,
                          f'{{"train": {len(data.train_images)}, "heldout": {len(data.heldout_images)}}}')

        family = ImageGanFamily(gan_config, data.train_images, data.train_labels, data.class_names)
        untrained = family.sampling_generator()
        if champion is not None:
            family.generator.load_state_dict(champion[0].generator.state_dict())
            family.ema_generator.load_state_dict(champion[0].generator.state_dict())
            context.log.info(f"continuing from champion version {champion_version}")

        def log(step: int, values: dict) -> None:
            context.log.info(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
            log_metrics(client, run_id, values, step)

        result = fit(family, gan_config.trainer_config(), run_dir, device=device, log=log,
                     should_stop=deadline(config.max_minutes), checkpoint_extra={"config": gan_config.to_dict()})
        bundle_path = save_bundle(export_bundle(family, step=result.step), run_dir / "bundle.pt")
        generator = load_generator(bundle_path)
        evaluation = evaluate(generator, data, classifier, untrained, compute.seed)
        table = evaluation["table"]
        score = table["model"][METRIC]
        summary = {
            "fid_classifier": score, "kid_classifier": table["model"]["kid_classifier"],
            "fid_classifier_floor": table["real_vs_real"][METRIC],
            "fid_classifier_ceiling": table["untrained_generator"][METRIC],
            "classes_covered": table["model"]["classes_covered"],
            "class_kl_to_uniform": table["model"]["kl_to_uniform"],
            "near_copies": evaluation["memorization"]["near_copy_count"],
            "classifier_heldout_accuracy": classifier_meta["heldout_accuracy"],
        }
        log_metrics(client, run_id, summary, result.step)
        report_markdown = metrics.format_report(table)
        client.log_text(run_id, report_markdown, "metrics_report.md")

        # No input example: MLflow would infer a signature from it and drop every other key (label, interpolate_to).
        version, _ = register_bundle(mlflow, run_id, MODEL_NAME, ImageGanPyfunc(), bundle_path, PYFUNC_REQUIREMENTS)
        client.set_model_version_tag(MODEL_NAME, version, "classifier_weights", sha256_file(classifier_meta["weights"]))
        promotion = promote(mlflow, MODEL_NAME, METRIC, version, score, higher_is_better=False)

    context.log.info(f"registered {MODEL_NAME} version {version}; {promotion['decision']}")
    return dg.MaterializeResult(
        metadata={
            **lineage_metadata(mlflow, MODEL_NAME, version, run_id, context),
            "start_from": f"champion version {champion_version}" if champion_version else "fresh",
            "steps": result.step,
            "resumed_from_step": result.resumed_from,
            "train_seconds": round(result.seconds, 1),
            "bf16_autocast": result.bf16,
            **{k: dg.MetadataValue.float(float(v)) for k, v in summary.items()},
            "metrics_table": dg.MetadataValue.md(report_markdown),
            "bundle": dg.MetadataValue.path(str(bundle_path)),
            "corpus_data_version": data.data_version,
            "samples": thumbnail_markdown(contact_sheet(evaluation["samples"][:32], cell=28)),
        },
        data_version=dg.DataVersion(f"{MODEL_NAME}/{version}"),
        check_results=[champion_check_result(promotion)],
    )


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
    data = load_image_split(storage)
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
    lineage = {
        "model": f"{MODEL_NAME} version {version}",
        "mlflow run": model_version.run_id,
        "shard data version": data.data_version,
        "git commit": model_version.tags.get("git_commit", "unknown"),
        "dagster run": context.run.run_id,
    }
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
    e = html.escape
    lineage_rows = "".join(f"<tr><th>{e(k)}</th><td><code>{e(str(v))}</code></td></tr>" for k, v in lineage.items())
    classes = ", ".join(e(name) for name in class_names)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}} img{{image-rendering:pixelated;max-width:100%}}
th{{text-align:left;padding-right:1em}}</style></head>
<body><h1>{e(title)}</h1>
<table>{lineage_rows}</table>
<h2>Samples</h2><p>One row per class: {classes}</p><img src="samples.png" alt="samples">
<h2>Latent interpolation</h2><img src="interpolation.png" alt="interpolation">
<h2>Nearest training images</h2>
<p>Each sample beside its nearest training image (pixel distance). Near copies among these: {int(np.sum(near_copy))}.</p>
<img src="nearest_neighbours.png" alt="nearest neighbours">
<h2>Metrics</h2><pre>{e(metrics_table)}</pre>
</body></html>
"""


IMAGE_GAN_ASSETS = [image_classifier, image_gan, image_gallery]
