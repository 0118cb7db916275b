"""`atelier`: run the pipeline, open the web UI, or seed the default corpora."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from corpora.atomic import atomic_write_text
from resources.storage import default_data_root

DAGSTER_YAML = """\
# Written by `atelier` on first use; edit freely, it is never overwritten.
telemetry:
  enabled: false
"""
UI_HOST = "127.0.0.1"
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}  # the UI keeps the DEBUG events


def ensure_dagster_home(data_root: Path) -> Path:
    """Keep the Dagster instance under the data root unless DAGSTER_HOME says otherwise."""
    home = Path(os.environ.get("DAGSTER_HOME") or data_root / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        atomic_write_text(home / "dagster.yaml", DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def run(job_name: str) -> int:
    import dagster as dg

    from pipelines.definitions import defs

    data_root = Path(default_data_root())
    home = ensure_dagster_home(data_root)
    defs.resources["mlflow"].initialize()  # create the tracking database once, before any fan-out
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, raise_on_error=False, run_config=QUIET_LOGS
        )
    print(f"\njob {job_name!r}: {'succeeded' if result.success else 'FAILED'} (run {result.run_id})")
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        metadata = {key: value.value for key, value in materialization.metadata.items()}
        summary = ", ".join(
            f"{key}={metadata[key]}" for key in ("files_seen", "ingested", "rejected", "duplicates") if key in metadata
        )
        print(f"  {materialization.asset_key.to_user_string()}: {summary}")
        if "manifest" in metadata:
            print(f"    manifest: {metadata['manifest']}")
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed:
            print(f"  check FAILED: {evaluation.asset_key.to_user_string()} {evaluation.check_name}")
    print(f"\nresults are under {data_root}; Dagster runs are in {home} (open them with `atelier ui`)")
    return 0 if result.success else 1


def ui(port: int) -> int:
    ensure_dagster_home(Path(default_data_root()))
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    command = ["dagster", "dev", "-w", str(workspace), "-h", UI_HOST, "-p", str(port)]
    os.execvp(command[0], command)


def seed() -> int:
    from corpora.defaults import DEFAULT_CORPORA, seed_if_empty

    root = Path(default_data_root())
    for corpus in DEFAULT_CORPORA:
        written = seed_if_empty(corpus, root / "raw" / corpus)
        print(f"{corpus}: {'wrote ' + str(written) + ' files' if written else 'already has files, left alone'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atelier", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="materialize a job (default: main) in the persistent instance")
    run_parser.add_argument("--job", default="main")
    ui_parser = commands.add_parser("ui", help=f"open the Dagster web UI on {UI_HOST}")
    ui_parser.add_argument("--port", type=int, default=3000)
    commands.add_parser("seed", help="write the default corpora into empty data/raw/<corpus>/ folders")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.job)
    if args.command == "ui":
        return ui(args.port)
    return seed()


if __name__ == "__main__":
    sys.exit(main())
