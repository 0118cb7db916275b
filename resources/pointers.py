"""The IO manager of the small results one asset hands another: a JSON pointer (which model
version, which weights file), never the weights themselves, never a pickle.

A pointer is kept per run (`<data root>/pointers/<asset>/<run id>.json`). A downstream step
reads the pointer of the very materialization its run made; when its upstream did not run in
the same run, it reads the one of the upstream's latest materialization. So two runs that
overlap each read their own model version, never whichever was written last.
"""
from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from common.atomic import atomic_write_json


def pointer_path(data_root: str | Path, asset_key: dg.AssetKey, run_id: str) -> Path:
    return Path(data_root) / "pointers" / "/".join(asset_key.path) / f"{run_id}.json"


def read_pointer(data_root: str | Path, instance: dg.DagsterInstance, asset_key: dg.AssetKey,
                 run_id: str | None) -> dict:
    """The pointer `asset_key` wrote in run `run_id`, or in its latest materialization when None."""
    if run_id is None:
        event = instance.get_latest_materialization_event(asset_key)
        if event is None:
            raise dg.Failure(f"{asset_key.to_user_string()} has never been materialized: materialize it first")
        run_id = event.run_id
    path = pointer_path(data_root, asset_key, run_id)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise dg.Failure(f"{asset_key.to_user_string()}'s materialization in run {run_id} left no pointer at {path}: "
                         "materialize it again") from None


def pointer_of_this_run(context: dg.AssetExecutionContext, data_root: str | Path, asset_key: dg.AssetKey) -> dict:
    """For an upstream the asset depends on without taking it as an input (it needs it only
    sometimes): the pointer this run's own materialization of it wrote, else its latest one."""
    materialized_here = context.instance.get_records_for_run(
        context.run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    here = any(record.event_log_entry.dagster_event.asset_key == asset_key for record in materialized_here)
    return read_pointer(data_root, context.instance, asset_key, context.run.run_id if here else None)


class PointerIOManager(dg.ConfigurableIOManager):
    data_root: str

    def _path(self, asset_key: dg.AssetKey, run_id: str) -> Path:
        return pointer_path(self.data_root, asset_key, run_id)

    def handle_output(self, context: dg.OutputContext, obj: dict) -> None:
        if not isinstance(obj, dict):
            raise TypeError(f"{context.asset_key.to_user_string()} must return a JSON pointer (a dict), "
                            f"not {type(obj).__name__}")
        atomic_write_json(self._path(context.asset_key, context.run_id), obj)

    def load_input(self, context: dg.InputContext) -> dict:
        return read_pointer(self.data_root, context.instance, context.asset_key, _upstream_run_id(context))


def _upstream_run_id(context: dg.InputContext) -> str | None:
    """This run's id when it materialized the upstream itself, else None. (For an upstream from
    an earlier run Dagster hands a placeholder run id, not the earlier run's.)"""
    try:
        this_run, upstream_run = context.step_context.run_id, context.upstream_output.run_id
    except (AttributeError, dg.DagsterInvariantViolationError):
        return None
    return this_run if upstream_run == this_run else None
