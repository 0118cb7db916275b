"""What runs without anyone clicking: nightly retraining, ingest on new files, gallery refresh,
and the human preference fit on new votes.

Everything here starts STOPPED, as Dagster's own defaults do, unless the environment says
`ATELIER_AUTOMATION=on` (what `atelier ui --automation` sets): switching it on is a decision,
and it needs the daemon that `dagster dev` runs. The README's "Automation" section explains
how each part behaves.
"""
import json
import os

import dagster as dg

from assets.human_preference import human_preference
from assets.ingest import CORPUS_ASSET_OF, RAW_FOLDERS, raw_fingerprint
from corpora.scanning import folder_signature
from ratings.store import VoteStore, default_votes_url
from resources.storage import StorageResource

AUTOMATION_ENV = "ATELIER_AUTOMATION"
RETRAIN_CRON_ENV, RETRAIN_CRON = "ATELIER_RETRAIN_CRON", "0 3 * * *"  # nightly, 03:00 UTC
RETRAIN_START_ENV, RETRAIN_START_FROM = "ATELIER_RETRAIN_START_FROM", "champion"
START_FROM_CHOICES = ("fresh", "champion")
RAW_FILES_INTERVAL_S = 60  # each tick stats every raw file; it hashes them only when a stat changed
NEW_VOTES_INTERVAL_S = 30  # one indexed max() per table per tick
DATA_VERSION_TAG = "dagster/data_version"  # the tag an observation carries its data version in


def automation_on() -> bool:
    return os.environ.get(AUTOMATION_ENV, "").lower() in ("1", "on", "true", "yes")


def _sensor_status() -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if automation_on() else dg.DefaultSensorStatus.STOPPED


# --- nightly retraining ---------------------------------------------------------------------


def retraining_schedule(training_assets, job, cron: str | None = None,
                        start_from: str | None = None) -> dg.ScheduleDefinition:
    """Retrain every family from the current shards, then refresh the galleries (they are in
    the job). `start_from` "champion" continues from each family's champion weights, so a
    night with unchanged data still trains further; "fresh" trains from scratch, which with
    unchanged data and code reproduces the last fresh model."""
    cron = cron or os.environ.get(RETRAIN_CRON_ENV, RETRAIN_CRON)
    start_from = start_from or os.environ.get(RETRAIN_START_ENV, RETRAIN_START_FROM)
    if start_from not in START_FROM_CHOICES:
        raise ValueError(f"{RETRAIN_START_ENV} must be one of {START_FROM_CHOICES}, not {start_from!r}")
    run_config = {"ops": {asset.op.name: {"config": {"start_from": start_from}} for asset in training_assets}}
    return dg.ScheduleDefinition(
        name="nightly_retraining", job=job, cron_schedule=cron, execution_timezone="UTC", run_config=run_config,
        default_status=dg.DefaultScheduleStatus.RUNNING if automation_on() else dg.DefaultScheduleStatus.STOPPED,
        description=f"Retrain every family (start_from={start_from}) and refresh the galleries; cron {cron!r} UTC.",
    )


# --- ingest when raw files change -------------------------------------------------------------


def _last_observed(instance: dg.DagsterInstance, corpus: str) -> str | None:
    record = instance.get_latest_data_version_record(RAW_FOLDERS[corpus].key, is_source=True)
    if record is None or record.asset_observation is None:
        return None
    return record.asset_observation.tags.get(DATA_VERSION_TAG)


@dg.sensor(
    name="raw_files", minimum_interval_seconds=RAW_FILES_INTERVAL_S, default_status=_sensor_status(),
    target=dg.AssetSelection.assets(*CORPUS_ASSET_OF.values()),
    description="Watches data/raw/<corpus>/ and ingests only the corpus whose files changed by content.",
)
def raw_files_sensor(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
    """The cursor remembers each folder's stat signature and content fingerprint. A changed
    signature (a touch, a copy) costs one hashing pass; only a changed fingerprint records an
    observation of raw_<corpus> (so the UI shows what is unsynced) and requests its ingest."""
    remembered = json.loads(context.cursor) if context.cursor else {}
    cursor, requests, observations = {}, [], []
    for corpus, corpus_asset in CORPUS_ASSET_OF.items():
        folder = storage.raw_dir(corpus)
        before = remembered.get(corpus, {})
        signature = folder_signature(folder)
        if before.get("signature") == signature:
            cursor[corpus] = before
            continue
        fingerprint = raw_fingerprint(storage, corpus)
        cursor[corpus] = {"signature": signature, "fingerprint": fingerprint}
        known = before.get("fingerprint") or _last_observed(context.instance, corpus)
        if fingerprint == known:
            continue
        context.log.info(f"{corpus}: content changed ({str(known)[:12]} -> {fingerprint[:12]}); requesting ingest")
        observations.append(dg.AssetObservation(asset_key=RAW_FOLDERS[corpus].key,
                                                tags={DATA_VERSION_TAG: fingerprint}))
        requests.append(dg.RunRequest(run_key=f"{corpus}-{fingerprint[:16]}", asset_selection=[corpus_asset.key]))
    return dg.SensorResult(run_requests=requests, asset_events=observations, cursor=json.dumps(cursor))


# --- galleries follow new models ----------------------------------------------------------------


def gallery_automation(gallery_assets) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the galleries' `eager()` conditions: a gallery (and the site) is rebuilt as
    soon as its family registers a new version, wherever that version came from."""
    return dg.AutomationConditionSensorDefinition(
        "gallery_automation", target=dg.AssetSelection.assets(*gallery_assets), default_status=_sensor_status(),
        description="Refreshes galleries when a training asset registers a new model version.",
    )


# --- people's votes -------------------------------------------------------------------------------


@dg.sensor(
    name="new_votes", minimum_interval_seconds=NEW_VOTES_INTERVAL_S, default_status=_sensor_status(),
    target=[human_preference],
    description="Refits human_preference when people have voted or flagged since its last run.",
)
def new_votes_sensor(context: dg.SensorEvaluationContext, storage: StorageResource):
    """The cursor is the newest vote id seen; the store's ids grow with every vote and flag."""
    store = VoteStore(default_votes_url(storage.root))
    try:
        latest = store.latest_vote_id()
    finally:
        store.dispose()
    seen = int(context.cursor or 0)
    if latest <= seen:
        return dg.SkipReason(f"no vote since id {seen}")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"votes-{latest}")], cursor=str(latest))
