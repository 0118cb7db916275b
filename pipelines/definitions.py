"""The Dagster code location: every asset, job and resource of Atelier."""
from pathlib import Path

import dagster as dg

from assets.image_gan import IMAGE_GAN_ASSETS
from assets.ingest import CORPUS_ASSETS
from assets.music_vae import MUSIC_ASSETS
from resources.compute import ComputeResource
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource, default_data_root

ingest_job = dg.define_asset_job(
    "ingest", selection=dg.AssetSelection.groups("corpora"),
    description="Ingest every corpus into Parquet shards.",
)
main_job = dg.define_asset_job(
    "main", selection=dg.AssetSelection.all(),
    description="Everything, in dependency order: what the README's first command runs.",
)


def build_resources(data_root: str | None = None) -> dict:
    root = Path(data_root or default_data_root())
    database = root / "mlflow" / "mlflow.db"
    return {
        "storage": StorageResource(data_root=str(root)),
        "compute": ComputeResource(),
        "mlflow": MlflowRegistry(
            tracking_uri=f"sqlite:///{database}", artifact_root=str(root / "mlflow" / "artifacts")
        ),
    }


defs = dg.Definitions(
    assets=[*CORPUS_ASSETS, *IMAGE_GAN_ASSETS, *MUSIC_ASSETS],
    jobs=[ingest_job, main_job],
    resources=build_resources(),
)
