"""The test family's Dagster side: a training asset and a gallery, as a real family has."""

import os
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from assets.gallery_page import gallery_lineage, gallery_page, write_cover
from assets.ingest import CORPUS_ASSET_OF
from assets.training import (POINTERS, champion_check_spec, corpus_manifest, train_and_register, trained_result)
from common.atomic import atomic_write_bytes, atomic_write_text
from corpora.preview import contact_sheet
from corpora.shards import png_bytes
from mean_image import FAMILY
from mean_image.model import MeanImageConfig, load_model
from models.train import TrainingRequest
from resources.compute import ComputeResource
from resources.human_gate import HumanGateResource
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource
from resources.trainer import TrainerLauncher

CODE_VERSION = "mean-image-1"
# The overlapping-runs test holds each gallery here until both runs have trained (a file it creates).
HOLD_GALLERY_ENV = "ATELIER_TEST_HOLD_GALLERY_UNTIL"


class MeanImageTrainConfig(dg.Config):
    seed: int = 0  # two runs with two seeds register two versions


@dg.asset(
    deps=[CORPUS_ASSET_OF[FAMILY.corpus]], code_version=CODE_VERSION, io_manager_key=POINTERS, pool="gpu",
    check_specs=[champion_check_spec(FAMILY.key, FAMILY.rule)],
)
def mean_image(context: dg.AssetExecutionContext, config: MeanImageTrainConfig, storage: StorageResource,
               compute: ComputeResource, mlflow: MlflowRegistry, trainer: TrainerLauncher,
               human_gate: HumanGateResource) -> Iterator:
    manifest_path, manifest = corpus_manifest(storage, FAMILY.corpus)
    model_config = MeanImageConfig.profile("demo", seed=config.seed)
    request = TrainingRequest(family=FAMILY.name, model_config=model_config.to_dict(), **compute.training_settings())
    trained = train_and_register(context, FAMILY, CODE_VERSION, request, manifest_path, manifest, "fresh", {},
                                 storage, trainer, mlflow, human_gate)
    yield from trained_result(context, FAMILY, trained, manifest, mlflow)


@dg.asset(code_version=CODE_VERSION, kinds={"html"})
def mean_image_gallery(context: dg.AssetExecutionContext, mean_image: dict, storage: StorageResource,
                       mlflow: MlflowRegistry) -> dg.MaterializeResult:
    hold = os.environ.get(HOLD_GALLERY_ENV)
    while hold and not Path(hold).exists():
        time.sleep(0.2)
    version = mean_image["version"]
    _, model_version = mlflow.load_pyfunc_model(FAMILY.name, version)
    folder = storage.galleries_dir(FAMILY.name) / version
    atomic_write_bytes(folder / "samples.png", png_bytes(contact_sheet(load_model(mean_image["bundle"]).sample(8, 0))))
    write_cover(folder, [("img", "samples.png")])
    lineage = gallery_lineage(FAMILY.name, version, model_version, mean_image["corpus_data_version"], context.run.run_id)
    atomic_write_text(folder / "index.html", gallery_page(FAMILY.title, lineage, '<img src="samples.png" alt="samples">',
                                                          mean_image["metrics_table"]))
    return dg.MaterializeResult(metadata={"model_version": version, "index": dg.MetadataValue.path(str(folder / "index.html"))})


TRAINING_ASSET, GALLERY_ASSET = mean_image, mean_image_gallery
ASSETS = [mean_image, mean_image_gallery]
