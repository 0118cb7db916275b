"""`atelier run`: ingest, then what is out of date, then the site, in the persistent instance.

A corpus that fails its blocking checks stops only the families that train on it; a family
whose training or gallery fails stops only itself. The site is built last from whatever
succeeded and names each family that did not, with its reason in one line; the exit status
still says that something failed.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from assets.ingest import CORPUS_ASSET_OF, PARTS_GROUP
from models.family import families
from pipelines.progress import RUN_CONFIG, one_line

SITE = dg.AssetKey("gallery_site")
CORPUS_SUMMARY = ("files_seen", "ingested", "rejected", "duplicates", "groups")
RUNNER_TAG = "atelier/runner"  # "<host>:<pid>" of the `atelier run` that executes the run in its own process


def load_run_config(path: Path | None) -> dict:
    """Dagster run config from a YAML file: the same keys the launchpad takes (ops.<asset>.config...)."""
    if path is None:
        return {}
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise SystemExit(f"cannot read the run config {path}: {one_line(error)}") from None
    if not isinstance(loaded, dict):
        raise SystemExit(f"{path}: a run config is a mapping (ops: {{<asset>: {{config: ...}}}}), not {type(loaded).__name__}")
    return loaded


def config_for(run_config: dict, keys) -> dict:
    """The run config of a run that materializes `keys`: only their ops' entries (Dagster refuses
    config for ops a run does not hold), with the progress logger."""
    names = {key.to_user_string() for key in keys}
    ops = {name: value for name, value in run_config.get("ops", {}).items() if name in names}
    return {**{k: v for k, v in run_config.items() if k not in ("ops", "loggers")}, **RUN_CONFIG,
            **({"ops": ops} if ops else {})}


@dataclass
class Outcome:
    results: list = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # family or corpus -> one line

    @property
    def success(self) -> bool:
        return not self.failures and all(result.success for result in self.results)


def failed_corpora(result) -> dict[str, str]:
    """Corpus asset -> reason, for each corpus whose step failed or whose blocking check did not pass."""
    failed = {}
    for event in result.get_asset_check_evaluations():
        if not event.passed:
            failed.setdefault(event.asset_key.to_user_string(),
                              f"check {event.check_name} did not pass: {event.description or 'no description'}")
    for event in result.get_step_failure_events():
        failed.setdefault(event.step_key, one_line(_error_of(event)))
    return failed


def _error_of(event) -> str:
    error = event.step_failure_data.error
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message if error is not None else "failed"


def family_of_assets(graph) -> dict[dg.AssetKey, str]:
    """Each family asset's key -> the family's name."""
    owner = {}
    for record in families().values():
        for asset in record.dagster().ASSETS:
            for key in asset.keys:
                owner[key] = record.name
    return owner


def release_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Runs a killed `atelier run` left STARTED, marked failed with their pool slots freed.

    `atelier run` executes runs in its own process, where no daemon watches them; without this
    the `gpu` slot a killed training claimed stays claimed and the next run waits forever. The
    training itself resumes from its checkpoints. Returns the ids released."""
    host = socket.gethostname()
    released = []
    active = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
    for run in instance.get_runs(filters=active):
        run_host, _, pid = run.tags.get(RUNNER_TAG, "").rpartition(":")
        if run_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        instance.report_run_failed(run, message=f"its `atelier run` (pid {pid}) ended without finishing it")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(run.run_id)
    return released


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_pipeline(defs: dg.Definitions, instance: dg.DagsterInstance, run_config: dict, everything: bool) -> Outcome:
    from pipelines.freshness import assets_to_refresh

    for run_id in release_orphaned_runs(instance):
        print(f"run {run_id[:8]} was left unfinished by a killed `atelier run`: marked failed, its slots freed")
    graph = defs.resolve_asset_graph()
    corpora = dg.AssetSelection.groups("corpora").resolve(graph)
    outcome = Outcome()
    ingest = _execute(defs.resolve_job_def("ingest"), instance, corpora, run_config)
    outcome.results.append(ingest)
    blocked_corpora = failed_corpora(ingest)
    outcome.failures.update(blocked_corpora)

    rest = graph.materializable_asset_keys - corpora - dg.AssetSelection.groups(PARTS_GROUP).resolve(graph)
    wanted = [key for key in graph.toposorted_asset_keys if key in rest] if everything else \
        assets_to_refresh(instance, graph, rest)
    blocked = set()
    if blocked_corpora:
        downstream = dg.AssetSelection.assets(*map(dg.AssetKey, blocked_corpora)).downstream().resolve(graph)
        blocked = {key for key in downstream if key in rest}
    owner = family_of_assets(graph)
    for record in families().values():
        corpus = CORPUS_ASSET_OF[record.corpus].key.to_user_string()
        if corpus in blocked_corpora:
            outcome.failures[record.name] = f"its corpus {corpus} failed ({blocked_corpora[corpus]})"
    selection = [key for key in wanted if key not in blocked and key != SITE]
    if selection:
        print(f"\nout of date: {', '.join(key.to_user_string() for key in selection)}")
        main = _execute(defs.resolve_job_def("main"), instance, selection, run_config)
        outcome.results.append(main)
        for event in main.get_step_failure_events():
            key = dg.AssetKey(event.step_key)
            name = owner.get(key, event.step_key)
            outcome.failures.setdefault(name, f"{event.step_key} failed: {one_line(_error_of(event))}")
    if selection or SITE in wanted or outcome.failures:
        site_config = {"ops": {"gallery_site": {"config": {"failures": {
            name: reason for name, reason in outcome.failures.items() if name in families()}}}}}
        outcome.results.append(_execute(defs.resolve_job_def("main"), instance, [SITE], site_config))
    elif not wanted:
        print("\nevery model and gallery is up to date with its data and code: nothing to train "
              "(`atelier run --all` recomputes everything)")
    return outcome


def _execute(job, instance, keys, run_config: dict):
    return job.execute_in_process(instance=instance, raise_on_error=False, asset_selection=list(keys),
                                  run_config=config_for(run_config, keys),
                                  tags={RUNNER_TAG: f"{socket.gethostname()}:{os.getpid()}"})


def print_summary(outcome: Outcome) -> None:
    metrics = {record.rule.metric for record in families().values()}
    shown = (*CORPUS_SUMMARY, "heldout_accuracy", "model_version", *sorted(metrics))
    for result in outcome.results:
        print(f"\nrun {result.run_id[:8]}: {'succeeded' if result.success else 'did not fully succeed'}")
        for event in result.get_asset_materialization_events():
            materialization = event.event_specific_data.materialization
            metadata = {key: value.value for key, value in materialization.metadata.items()}
            summary = ", ".join(f"{key}={_short(metadata[key])}" for key in shown if key in metadata)
            print(f"  {materialization.asset_key.to_user_string()}: {summary}")
            for key in ("manifest", "index"):
                if key in metadata:
                    print(f"    {key}: {metadata[key]}")
    for name, reason in sorted(outcome.failures.items()):
        print(f"FAILED {name}: {reason}")


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else value
