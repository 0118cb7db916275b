"""The Dagster code location: every asset, job, schedule, sensor and resource of Atelier."""
import os
from pathlib import Path

import dagster as dg

from pipelines.progress import LOGGER_NAME, progress_logger, quiet_known_warnings

quiet_known_warnings()  # in the step processes of `atelier run`; before the assets' decorators warn

from assets.gallery_site import gallery_site  # noqa: E402
from assets.human_preference import human_preference  # noqa: E402
from assets.ingest import CORPUS_ASSET_OF, DECODE_PARTS, PART_ASSET_OF, PARTS_GROUP, RAW_FOLDERS  # noqa: E402
from assets.training import POINTERS  # noqa: E402
from models.family import families  # noqa: E402
from pipelines.automation import gallery_automation, new_votes_sensor, raw_files_sensor, retraining_schedule  # noqa: E402
from resources.compute import ComputeResource  # noqa: E402
from resources.human_gate import HUMAN_GATE_ENV, HumanGateResource  # noqa: E402
from resources.mlflow_registry import (  # noqa: E402, F401 (the UI variables: `atelier ui` sets them)
    DAGSTER_UI_ENV, MLFLOW_UI_ENV, registry_for,
)
from resources.pointers import PointerIOManager  # noqa: E402
from resources.k8s_trainer import K8sTrainerLauncher  # noqa: E402
from resources.storage import StorageResource, default_data_root  # noqa: E402
from resources.trainer import TrainerLauncher  # noqa: E402

TRAINER_MODE_ENV, TRAINER_NPROC_ENV = "ATELIER_TRAINER_MODE", "ATELIER_TRAINER_NPROC"  # subprocess|in_process|k8s; ranks
TRAINER_IMAGE_ENV = "ATELIER_TRAINER_IMAGE"  # ATELIER_TRAINER_MODE=k8s: the trainer pod's image
EXECUTOR_ENV = "ATELIER_EXECUTOR"  # "k8s": dagster-k8s's k8s_job_executor, one Kubernetes Job per step

FAMILY_MODULES = [record.dagster() for record in families().values()]  # each family's assets/<key>.py
TRAINING_ASSETS = [module.TRAINING_ASSET for module in FAMILY_MODULES]  # each takes `start_from`, registers a model
GALLERY_ASSETS = [*(module.GALLERY_ASSET for module in FAMILY_MODULES), gallery_site]

ingest_job = dg.define_asset_job(
    "ingest", selection=dg.AssetSelection.groups("corpora"),
    description="Ingest every corpus into Parquet shards.",
)
main_job = dg.define_asset_job(
    "main", selection=dg.AssetSelection.all() - dg.AssetSelection.groups(PARTS_GROUP),
    description="Everything, in dependency order: what the README's first command runs.",
)
ingest_parts_job = dg.define_asset_job(
    "ingest_parts", selection=dg.AssetSelection.groups(PARTS_GROUP), partitions_def=DECODE_PARTS,
    description="Decode each corpus in 16 parts, a step per corpus and part (backfill it, then run `ingest`).",
)
retrain_job = dg.define_asset_job(
    "retrain", selection=dg.AssetSelection.assets(*TRAINING_ASSETS).downstream(),
    description="Every family's training asset from the current shards, then the galleries and the site.",
)


def build_resources(data_root: str | None = None) -> dict:
    """Resources under one data root. MLflow: `registry_for` (`$MLFLOW_TRACKING_URI` when set,
    else a SQLite store under the data root). Training runs in a Pipes subprocess (`$ATELIER_TRAINER_MODE=in_process` keeps it in the step's
    process; `k8s` puts it in a Kubernetes pod running `$ATELIER_TRAINER_IMAGE`, which needs the
    `k8s` extra), under torchrun with `$ATELIER_TRAINER_NPROC` ranks when that is above 1. The champion
    rule's human gate is on with `$ATELIER_HUMAN_GATE=on` (docs/human-preference.md)."""
    root = Path(data_root or default_data_root())
    registry = registry_for(root)
    mode, nproc = os.environ.get(TRAINER_MODE_ENV, "subprocess"), int(os.environ.get(TRAINER_NPROC_ENV, "1"))
    if mode == "k8s":
        trainer = K8sTrainerLauncher(image=os.environ.get(TRAINER_IMAGE_ENV, ""), nproc_per_node=nproc)
    else:
        trainer = TrainerLauncher(mode=mode, nproc_per_node=nproc)
    human_gate = HumanGateResource(enabled=os.environ.get(HUMAN_GATE_ENV, "").lower() in ("1", "on", "true", "yes"))
    return {"storage": StorageResource(data_root=str(root)), "compute": ComputeResource(), "mlflow": registry,
            "trainer": trainer, POINTERS: PointerIOManager(data_root=str(root)), "human_gate": human_gate}


def forkserver_unless_chosen(config: dict) -> dict:
    """Multiprocess steps fork from a server that imported this code location once, unless the run
    config names a start method: a spawned step imports Dagster, torch and every asset again (seconds each)."""
    multiprocess = config.get("multiprocess")
    if multiprocess is None or multiprocess.get("start_method"):
        return config
    return {**config, "multiprocess": {**multiprocess, "start_method": {"forkserver": {}}}}


def build_executor() -> dg.ExecutorDefinition:
    """Dagster's default executor (steps in processes of the run's own, forked from a preloaded
    server), or with `$ATELIER_EXECUTOR=k8s` the k8s_job_executor: each step in a Kubernetes Job of
    its own. That needs the `k8s` extra and the K8sRunLauncher (docs/deploy/dagster-k8s.yaml)."""
    choice = os.environ.get(EXECUTOR_ENV, "")
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if choice:
        raise ValueError(f"{EXECUTOR_ENV} must be 'k8s' or unset, not {choice!r}")
    default = dg.multi_or_in_process_executor
    return default.configured(forkserver_unless_chosen, config_schema=default.config_schema.as_field())


defs = dg.Definitions(
    assets=[*RAW_FOLDERS.values(), *CORPUS_ASSET_OF.values(), *PART_ASSET_OF.values(),
            *(asset for module in FAMILY_MODULES for asset in module.ASSETS), gallery_site, human_preference],
    jobs=[ingest_job, ingest_parts_job, main_job, retrain_job],
    schedules=[retraining_schedule(TRAINING_ASSETS, retrain_job)],
    sensors=[raw_files_sensor, new_votes_sensor, gallery_automation(GALLERY_ASSETS)],
    resources=build_resources(),
    executor=build_executor(),
    # `atelier run` asks for "progress" (pipelines/progress.py); runs that name no logger get Dagster's console
    loggers={"console": dg.colored_console_logger, LOGGER_NAME: progress_logger},
)
