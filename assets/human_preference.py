"""`human_preference`: what people's votes say about each family's model versions, written onto
the versions in the registry; with the human gate on, it also promotes a waiting challenger.

The fit is ratings/preference.py (Bradley-Terry per family); the votes come from the database
of ratings/store.py. The `new_votes` sensor (pipelines/automation.py) runs it on new votes.
"""
import math

import dagster as dg

from assets.training import judge_challenger
from models.family import FamilyRecord, families
from ratings.preference import FamilyPreference, evidence, fit_family
from ratings.store import FLAG_REASONS, VoteStore, default_votes_url
from resources.human_gate import HumanGateResource
from resources.mlflow_registry import MlflowRegistry
from resources.storage import StorageResource

CODE_VERSION = "human-preference-1"
GROUP = "people"
SCORE_TAGS = ("human_score", "human_score_low", "human_score_high")  # on each model version


def version_tags(preference: FamilyPreference, version: str) -> dict[str, str]:
    """The tags a model version carries: its score and 95% interval (when it was compared with
    another version), its votes, wins and flags by reason."""
    found = preference.versions[version]
    tags = {"human_votes": str(found.votes), "human_wins": str(found.wins),
            **{f"human_flags_{reason}": str(found.flags[reason]) for reason in FLAG_REASONS}}
    if math.isfinite(found.score):
        tags.update(zip(SCORE_TAGS, (f"{found.score:.4f}", f"{found.low:.4f}", f"{found.high:.4f}")))
    return tags


def _table(rows: list[dict]) -> str:
    head = ["family", "version", "human_score", "95% interval", "votes", "wins", *(f"flags {r}" for r in FLAG_REASONS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        interval = f"[{row['human_score_low']}, {row['human_score_high']}]" if "human_score" in row else ""
        lines.append("| " + " | ".join([row["family"], row["version"], row.get("human_score", "not compared"), interval,
                                         row["human_votes"], row["human_wins"],
                                         *(row[f"human_flags_{r}"] for r in FLAG_REASONS)]) + " |")
    return "\n".join(lines)


def _registered_versions(mlflow: MlflowRegistry, family: FamilyRecord) -> set[str]:
    from mlflow.exceptions import MlflowException

    try:
        return {str(v.version) for v in mlflow.client().search_model_versions(f"name='{family.name}'")}
    except MlflowException:
        return set()


def _promote_waiting_challenger(mlflow: MlflowRegistry, family: FamilyRecord, gate, preference) -> dict | None:
    """Ask the champion rule again about the family's challenger, now with the votes so far."""
    challenger = mlflow.get_version_by_alias(family.name, "challenger")
    champion = mlflow.get_version_by_alias(family.name, "champion")
    if challenger is None or champion is None or challenger.version == champion.version:
        return None
    version = str(challenger.version)
    scores = {name: float(challenger.tags.get(name, "nan")) for name in family.rule.metrics}
    return judge_challenger(mlflow, family.name, family.rule, gate, version, scores,
                            lambda champion_version: evidence(preference, version, champion_version))


@dg.asset(
    group_name=GROUP, code_version=CODE_VERSION, kinds={"sql", "mlflow"},
    deps=[record.dagster().TRAINING_ASSET for record in families().values()],
    description="A Bradley-Terry score (95% interval), vote and flag counts per model version from people's "
    "votes, written as `human_*` tags on each MLflow model version; with the human gate on, promotes a "
    "challenger that was waiting for votes.",
)
def human_preference(context: dg.AssetExecutionContext, storage: StorageResource, mlflow: MlflowRegistry,
                     human_gate: HumanGateResource) -> dg.MaterializeResult:
    store = VoteStore(default_votes_url(storage.root))
    try:
        latest = store.latest_vote_id()  # first: votes arriving during the fit are the next run's
        fitted = [(record, fit_family(record.name, store.pairwise(record.name), store.flags(record.name)))
                  for record in families().values()]
    finally:
        store.dispose()
    gate, client = human_gate.gate(), mlflow.client()
    rows, promotions = [], {}
    for record, preference in fitted:
        registered = _registered_versions(mlflow, record)
        for version in preference.versions:
            if version not in registered:
                context.log.warning(f"{record.name}: votes name version {version}, which is not registered; left out")
                continue
            tags = version_tags(preference, version)
            for name, value in tags.items():
                client.set_model_version_tag(record.name, version, name, value)
            rows.append({"family": record.name, "version": version, **tags})
        if gate.enabled and (promotion := _promote_waiting_challenger(mlflow, record, gate, preference)):
            promotions[record.name] = promotion
            context.log.info(f"{record.name}: {promotion['decision']}")
    return dg.MaterializeResult(
        metadata={
            "votes_through_id": latest,
            "preference": dg.MetadataValue.md(_table(rows)),
            "versions": dg.MetadataValue.json(rows),
            "human_gate": gate.describe(),
            "promotions": dg.MetadataValue.json(promotions),
        },
        data_version=dg.DataVersion(f"votes-{latest}"),
    )
