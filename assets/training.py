"""What every training asset shares: one flow from a training request to a registered,
promoted model version (`train_and_register`), and the lineage, logging and promotion under it."""
import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np

from assets.ingest import CORPUS_ASSET_OF
from common.hashing import sha256_json
from corpora.ingest import load_manifest
from corpora.shards import png_bytes
from models.champion import HUMAN_NOT_ASKED, HUMAN_PASS, HUMAN_WAIT, ChampionRule, HumanEvidence, HumanGate
from models.family import FamilyRecord
from models.train import TrainingRequest
from provenance.licences import training_tags
from ratings.preference import evidence, fit_family
from ratings.store import VoteStore, default_votes_url
from resources.compute import ComputeResource
from resources.human_gate import HumanGateResource
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource
from resources.trainer import TrainerLauncher, TrainingReport


class TrainingRunConfig(dg.Config):
    """What every training asset's run config holds; each family's adds its own fields."""
    profile: str = "demo"  # one of the family config's PROFILES (demo, cpu-long, gpu, ...)
    steps: int = 0  # 0: the profile's
    batch_size: int = 0  # 0: the profile's
    max_minutes: float = 0.0  # stop (and register) after this long, per model; 0: no limit
    start_from: str = "fresh"  # "fresh", or "champion": continue from the champion's weights

    def family_config(self, config_class, seed: int, **fields):
        """The profile of `config_class` with this run's overrides and `fields`."""
        if self.profile not in config_class.PROFILES:
            raise dg.Failure(f"unknown profile {self.profile!r}; choose one of {sorted(config_class.PROFILES)}")
        overrides = {"seed": seed, **({"steps": self.steps} if self.steps else {}),
                     **({"batch_size": self.batch_size} if self.batch_size else {}), **fields}
        return config_class.profile(self.profile, **overrides)

    def request_settings(self, compute: ComputeResource) -> dict:
        """The compute resource's TrainingRequest settings with this run's time limit."""
        settings = compute.training_settings()
        return {**settings, "trainer": {**settings["trainer"], "max_minutes": self.max_minutes}}


def corpus_manifest(storage: StorageResource, corpus: str) -> tuple[Path, dict]:
    """(path, content) of the manifest under data/shards/<corpus>/."""
    path = storage.shards_dir(corpus) / "manifest.json"
    manifest = load_manifest(path)
    if manifest is None:
        raise dg.Failure(f"no shards at {path}: materialize {CORPUS_ASSET_OF[corpus].key.to_user_string()} first")
    return path, manifest


POINTERS = "pointers"  # the IO manager of the small JSON results assets hand on (resources/pointers.py)


def thumbnail_markdown(picture: np.ndarray) -> dg.MetadataValue:
    """A small PNG inline in the Dagster UI (kept small: metadata lives in the event log)."""
    encoded = base64.b64encode(png_bytes(picture)).decode("ascii")
    return dg.MetadataValue.md(f"![preview](data:image/png;base64,{encoded})")


def log_params(client, run_id: str, values: dict) -> None:
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(str(k), str(v)[:6000]) for k, v in values.items()])


def log_metrics(client, run_id: str, values: dict, step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    finite = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and np.isfinite(float(v))}
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in finite.items()])


def log_training_data(client, run_id: str, name: str, manifest_path: Path, data_version: str, profile: str) -> None:
    """The shard manifest as the run's training dataset input (name, digest, source)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=name, digest=data_version[:36], source_type="local", source=str(manifest_path),
                      schema=None, profile=profile)
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])])


def promote(registry: MlflowRegistry, model_name: str, rule: ChampionRule, version: str,
            scores: dict[str, float], gate: HumanGate = HumanGate(), votes_url: str = "") -> dict:
    """Tag the new version with every number `rule` reads, point `challenger` at it, and move
    `champion` to it only when the rule (and the human gate, when on) says it beats the current
    champion. Returns the comparison, either way."""
    client = registry.client()
    for name in rule.metrics:
        client.set_model_version_tag(model_name, version, name, f"{scores[name]:.6f}")
    registry.set_alias(model_name, "challenger", version)
    return judge_challenger(registry, model_name, rule, gate, version, scores,
                            lambda champion: human_evidence(votes_url, model_name, version, champion))


def human_evidence(votes_url: str, model_name: str, challenger: str, champion: str) -> HumanEvidence:
    """The votes so far on `challenger` against `champion`, from the votes database."""
    store = VoteStore(votes_url)
    try:
        preference = fit_family(model_name, store.pairwise(model_name), store.flags(model_name))
        return evidence(preference, challenger, champion)
    finally:
        store.dispose()


def judge_challenger(registry: MlflowRegistry, model_name: str, rule: ChampionRule, gate: HumanGate, version: str,
                     scores: dict[str, float], evidence_against: Callable[[str], HumanEvidence]) -> dict:
    """Both parts of the champion rule for `version` against the current champion, and `champion`
    moved to it when both pass. The human part is asked only when the metric part passes; a
    version it makes wait stays `challenger`, and `human_preference` asks again on new votes."""
    current = registry.get_version_by_alias(model_name, "champion")
    champion_scores = None
    if current is not None:
        champion_scores = {name: float(current.tags[name]) if name in current.tags else float("nan")
                           for name in rule.metrics}
    metric_passes, reasons = rule.judge(scores, champion_scores)
    if not gate.enabled:
        human, human_part = HUMAN_PASS, "human gate off"
    elif current is None:
        human, human_part = HUMAN_PASS, "no champion to compare with"
    elif not metric_passes:
        human, human_part = HUMAN_NOT_ASKED, "not asked: the metric part does not pass"
    else:
        human, human_part = gate.judge(evidence_against(str(current.version)))
    promoted = metric_passes and human == HUMAN_PASS
    if promoted:
        registry.set_alias(model_name, "champion", version)
    if current is None:
        decision = f"version {version} ({rule.metric} {scores[rule.metric]:.4f}) is the first champion"
    else:
        verb = "replaces" if promoted else "does not replace"
        decision = f"version {version} {verb} champion version {current.version}: " + "; ".join(reasons)
        if gate.enabled:
            decision += f"; {human_part}" + (" (stays challenger until people vote)" if human == HUMAN_WAIT else "")
    metric = rule.metric
    return {
        "promoted": promoted, "new_version": version, f"new_{metric}": scores[metric],
        "previous_champion": str(current.version) if current is not None else "none",
        f"champion_{metric}": champion_scores[metric] if champion_scores else float("nan"),
        "rule": f"{rule.describe()}; {gate.describe()}", "decision": decision,
        "metric_part": "; ".join(reasons), "metric_passes": metric_passes,
        "human_part": human_part, "human_verdict": human,
    }


def champion_check_spec(asset_name: str, rule: ChampionRule) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        "beats_champion", asset=asset_name,
        description=f"The new version against the champion ({rule.describe()}; and people's votes when the "
        "human_gate resource is on); champion moves only when every part passes.",
    )


def champion_check_result(promotion: dict) -> dg.AssetCheckResult:
    """Passes when the new version became champion; a warning (not a failure) when it did not."""
    return dg.AssetCheckResult(
        check_name="beats_champion", passed=promotion["promoted"],
        severity=dg.AssetCheckSeverity.WARN, metadata=promotion,
    )


# --- retraining: where a run starts, and registering without duplicates ----------------------

START_FROM_CHOICES = ("fresh", "champion")


def run_folder_name(data_version: str, config_hash: str, start_from: str, champion_version: str | None) -> str:
    """Same data, code, config and starting weights -> same folder, so a killed run resumes.
    A warm start names the champion it starts from: a new champion means a new run."""
    if start_from not in START_FROM_CHOICES:
        raise dg.Failure(f"start_from must be one of {START_FROM_CHOICES}, not {start_from!r}")
    start = f"champion-v{champion_version}" if champion_version else "fresh"
    return f"{data_version[:12]}-{config_hash[:12]}-{start}"


def registered_version_with(registry: MlflowRegistry, model_name: str, bundle_sha256: str) -> str | None:
    """An existing version of `model_name` whose weights file has this hash, if any: retraining
    with unchanged data, code, config and start reproduces the weights, and registering them
    again would only add a duplicate version."""
    from mlflow.exceptions import MlflowException

    try:
        versions = registry.client().search_model_versions(
            f"name='{model_name}' and tags.bundle_sha256='{bundle_sha256}'")
    except MlflowException:
        return None
    return str(min(int(v.version) for v in versions)) if versions else None


def lineage_metadata(registry: MlflowRegistry, model_name: str, version: str, run_id: str,
                     context: dg.AssetExecutionContext) -> dict:
    """Metadata that links a training asset to MLflow (URLs when a UI is configured), after
    linking the model version back to this Dagster run."""
    asset_key = context.asset_key.to_user_string()
    registry.link_version_to_dagster(model_name, version, context.run.run_id, asset_key)
    metadata = {"model_version": version, "model_uri": registry.model_uri(model_name, version),
                "mlflow_run_id": run_id}
    if url := registry.run_url(run_id):
        metadata["mlflow_run"] = dg.MetadataValue.url(url)
    if url := registry.model_version_url(model_name, version):
        metadata["mlflow_model_version"] = dg.MetadataValue.url(url)
    return metadata


def register_bundle(registry: MlflowRegistry, run_id: str, family: FamilyRecord, bundle_path: Path,
                    input_example=None) -> tuple[str, bool]:
    """Register `bundle_path` as a pyfunc version of the family's model: (version, newly_registered).
    Weights identical to an existing version's reuse that version (see registered_version_with)."""
    from common.hashing import sha256_file

    digest = sha256_file(bundle_path)
    existing = registered_version_with(registry, family.name, digest)
    if existing is not None:
        registry.client().set_tag(run_id, "reused_model_version", existing)
        return existing, False
    _, version = registry.log_pyfunc_model(
        run_id, name=family.name, python_model=family.pyfunc(), artifacts={"bundle": str(bundle_path)},
        registered_model_name=family.name, code_paths=family.code_paths(), pip_requirements=family.pip_requirements(),
        input_example=input_example, tags={"bundle_sha256": digest},
    )
    return version, True


# --- the flow every training asset runs ------------------------------------------------------


@dataclass
class TrainedVersion:
    version: str
    run_id: str
    report: TrainingReport
    promotion: dict
    start_from: str  # "fresh" or "champion version N"


def flat_params(values: dict, prefix: str = "") -> dict:
    """{"chorale": {"hidden": 256}} -> {"chorale.hidden": 256}: MLflow params are flat."""
    flat = {}
    for name, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_params(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def train_and_register(
    context: dg.AssetExecutionContext, family: FamilyRecord, code_version: str, request: TrainingRequest,
    manifest_path: Path,
    manifest: dict, start_from: str, params: dict, storage: StorageResource, trainer: TrainerLauncher,
    mlflow: MlflowRegistry, human_gate: HumanGateResource | None = None,
) -> TrainedVersion:
    """Run the request through `trainer` (a Pipes subprocess by default) inside an MLflow run
    with lineage tags, then register its bundle and promote it. A warm start downloads the
    champion's bundle into the run folder, which names the champion: a new champion, a new run."""
    config_hash = sha256_json(request.model_config)
    champion = mlflow.get_version_by_alias(family.name, "champion") if start_from == "champion" else None
    champion_version = str(champion.version) if champion is not None else None
    run_dir = storage.checkpoints_dir(family.key) / run_folder_name(
        manifest["version"], config_hash, start_from, champion_version)
    if champion_version:
        bundle, _ = mlflow.download_bundle(family.name, champion_version, run_dir / "start-from")
        request.init_from = str(bundle)
        context.log.info(f"continuing from champion version {champion_version}")

    tags = mlflow.lineage_tags(dagster_run_id=context.run.run_id, asset_key=family.key,
                               code_version=code_version, data_version=manifest["version"],
                               config_hash=config_hash)
    with mlflow.start_run(family.name, run_name=f"{family.name} {context.run.run_id[:8]}",
                          tags=tags) as run:
        client, run_id = mlflow.client(), run.info.run_id
        log_params(client, run_id, {**flat_params(request.model_config), **params, "start_from": start_from})
        log_training_data(client, run_id, CORPUS_ASSET_OF[family.corpus].key.to_user_string(), manifest_path, manifest["version"],
                          json.dumps(manifest.get("counts", {})))
        report = trainer.launch(context, request, manifest_path, run_dir)
        outcome = report.outcome
        for step, values in report.metrics:
            log_metrics(client, run_id, values, step)
        log_metrics(client, run_id, outcome.summary, outcome.step)
        client.log_text(run_id, outcome.report_markdown, "metrics_report.md")
        version, _ = register_bundle(mlflow, run_id, family, Path(outcome.bundle))
        for name, value in training_tags(manifest).items():  # what it was trained on (docs/licences.md)
            client.set_model_version_tag(family.name, version, name, value)
        gate = human_gate.gate() if human_gate is not None else HumanGate()
        votes_url = default_votes_url(storage.root) if gate.enabled else ""
        promotion = promote(mlflow, family.name, family.rule, version,
                            {**outcome.summary, family.rule.metric: outcome.score}, gate, votes_url)
    context.log.info(f"registered {family.name} version {version}; {promotion['decision']}")
    return TrainedVersion(version, run_id, report, promotion,
                          f"champion version {champion_version}" if champion_version else "fresh")


def trained_result(context: dg.AssetExecutionContext, family: FamilyRecord, trained: TrainedVersion,
                   manifest: dict, mlflow: MlflowRegistry, extra_metadata: dict | None = None) -> Iterator:
    """The training asset's events: its output, a pointer to the version it registered (what the
    gallery of this very run reads), with lineage links, the run's numbers and its metric table as
    metadata; then the champion check. The data version is the registered version."""
    outcome = trained.report.outcome
    details = {name: dg.MetadataValue.json(value) if isinstance(value, (list, dict)) else value
               for name, value in outcome.details.items()}
    pointer = {"model": family.name, "version": trained.version, "mlflow_run_id": trained.run_id,
               "bundle": outcome.bundle, "corpus_data_version": manifest["version"],
               "metrics_table": outcome.report_markdown}
    yield dg.Output(
        pointer,
        metadata={
            **lineage_metadata(mlflow, family.name, trained.version, trained.run_id, context),
            "start_from": trained.start_from,
            "steps": outcome.step,
            "resumed_from_step": outcome.resumed_from,
            "train_seconds": round(outcome.train_seconds, 1),
            **{name: dg.MetadataValue.float(value) for name, value in outcome.summary.items()},
            **details,
            "metrics_table": dg.MetadataValue.md(outcome.report_markdown),
            "bundle": dg.MetadataValue.path(outcome.bundle),
            "checkpoint": dg.MetadataValue.path(outcome.checkpoint),
            "corpus_data_version": manifest["version"],
            **(extra_metadata or {}),
        },
        data_version=dg.DataVersion(f"{family.name}/{trained.version}"),
    )
    yield champion_check_result(trained.promotion)
