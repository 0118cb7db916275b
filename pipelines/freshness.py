"""Which assets a rerun must materialize: those never materialized or out of date, and
everything downstream of them. `atelier run` uses it so that a rerun with nothing changed
recomputes nothing.

"Out of date" is the rule behind the Dagster UI's "unsynced" label, read from the tags Dagster
writes on every materialization: the code version it ran with, and the data version of each
input it read. An asset is current when both still match.
"""
from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

# Tags Dagster writes on every materialization (dagster._core.definitions.data_version).
CODE_VERSION_TAG = "dagster/code_version"
DATA_VERSION_TAG = "dagster/data_version"
INPUT_DATA_VERSION_TAG = "dagster/input_data_version/{key}"


def latest_tags(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict | None:
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return None
    return dict(event.asset_materialization.tags or {})


def is_current(instance: dg.DagsterInstance, asset_graph, key: dg.AssetKey) -> bool:
    """Materialized with today's code version, from the inputs' latest data versions."""
    node = asset_graph.get(key)
    tags = latest_tags(instance, key)
    if tags is None or node.code_version is None or tags.get(CODE_VERSION_TAG) != node.code_version:
        return False
    for parent in node.parent_keys:
        if asset_graph.get(parent).is_partitioned:
            continue  # decoded parts only fill a corpus's row cache; the corpus's own data version covers them
        parent_tags = latest_tags(instance, parent)
        recorded = tags.get(INPUT_DATA_VERSION_TAG.format(key=parent.to_user_string()))
        if parent_tags is None or recorded is None or recorded != parent_tags.get(DATA_VERSION_TAG):
            return False
    return True


def assets_to_refresh(instance: dg.DagsterInstance, asset_graph, keys: Iterable[dg.AssetKey]) -> list[dg.AssetKey]:
    """Of `keys` (materializable, with materializable parents), those not current and every key
    downstream of one, in dependency order. Downstream ones are included even when they look
    current, because their inputs are about to change."""
    wanted = set(keys)
    ordered = [key for key in asset_graph.toposorted_asset_keys if key in wanted]
    refresh: set[dg.AssetKey] = set()
    for key in ordered:
        if any(parent in refresh for parent in asset_graph.get(key).parent_keys) or not is_current(
                instance, asset_graph, key):
            refresh.add(key)
    return [key for key in ordered if key in refresh]
