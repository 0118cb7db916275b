"""MLflow tracking and model registry as a small Dagster resource.

Every call goes through an explicit ``MlflowClient`` bound to this resource's URIs. Nothing
here touches MLflow's fluent globals (``mlflow.set_tracking_uri``, the active run, the active
experiment), so two resources with different stores can live in one process, and one Dagster
run can't leak an MLflow run into the next one (the problem with dagster-mlflow).

``mlflow`` is imported lazily (1-2 s), so loading the code location stays cheap for steps that
never touch the registry.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import dagster as dg
from pydantic import PrivateAttr

from common.mlflow_store import REGISTRY_URI_ENV, TRACKING_URI_ENV, local_store, resolve_version, version_by_alias

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models.model import ModelInfo

# Tags copied from a run onto its LoggedModel and registered model version.
LINEAGE_TAG_KEYS = (
    "dagster_run_id",
    "dagster_asset_key",
    "code_version",
    "git_commit",
    "data_version",
    "config_hash",
)
MLFLOW_UI_ENV, DAGSTER_UI_ENV = "ATELIER_MLFLOW_UI_URL", "ATELIER_DAGSTER_UI_URL"  # set by `atelier ui`
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_GLOBAL_URI_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """SHA of the checkout this file lives in (not the CWD), or "unknown" without git/.git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (POSIX flock) so concurrent initialisers run one at a time."""
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_pyfunc_save() -> Iterator[None]:
    """Pickling the wrapper object is intended (its code ships in ``code_paths``); MLflow warns
    about it on every save."""
    import logging

    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_logger.level
    pyfunc_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pyfunc_logger.setLevel(level)


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at ``uri`` for one call, then restore it exactly.

    Needed only around ``create_model_version``: MLflow's SQL registry store resolves a
    ``models:/<model_id>`` source with a bare ``MlflowClient()`` (a TODO in MLflow's source),
    i.e. through the global URI; left alone it creates ``./mlflow.db`` in the CWD and fails.
    ``mlflow.set_tracking_uri`` also writes/unsets MLFLOW_TRACKING_URI, so restore that too.
    The lock covers threads using this module, not other code reading the global meanwhile.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils

    with _GLOBAL_URI_LOCK:
        old, old_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(old)
            if old_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = old_env


class MlflowRegistry(dg.ConfigurableResource):
    """Tracking + registry on one MLflow store (SQLite file by default, or any server URI).

    Use absolute paths in sqlite URIs: Dagster step processes may run from other directories.
    """

    tracking_uri: str
    artifact_root: str = ""
    registry_uri: str = ""
    # Where people open the UIs, for links in Dagster metadata and MLflow descriptions. An
    # http(s) tracking URI is its own UI; a SQLite store has one only while `atelier ui` runs.
    ui_url: str = ""
    dagster_ui_url: str = ""

    _client: Any = PrivateAttr(default=None)

    # ---- store ---------------------------------------------------------------------------
    def _sqlite_path(self) -> Path | None:
        if not self.tracking_uri.startswith("sqlite:///"):
            return None
        return Path(self.tracking_uri[len("sqlite:///"):].split("?", 1)[0])

    def resolved_artifact_root(self) -> str:
        """Explicit root for new experiments. MLflow's own default is ``./mlruns`` relative to
        the CWD, which differs between Dagster step processes; "" means "let the server pick"
        (right for an http tracking server that proxies artifacts)."""
        root = self.artifact_root
        if not root and (db := self._sqlite_path()) is not None:
            root = str(db.parent / "artifacts")
        if root and "://" not in root and not root.startswith("file:"):
            root = str(Path(root).absolute())
        return root

    def initialize(self) -> None:
        """Create the database and run MLflow's migrations, once, before any fan-out.

        Two or more processes migrating a fresh SQLite file at once crash in Alembic ("duplicate
        column", "table already exists"), so for SQLite this holds a file lock (``<db>.lock``)
        beside the database; later calls only check the schema (tens of ms). It also creates
        the Default experiment (id 0) under our artifact root rather than ``<cwd>/mlruns``.
        No-op for an http(s) tracking server, which migrates its own database.
        """
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        if self.tracking_uri.split(":", 1)[0].split("+", 1)[0] not in _DB_SCHEMES:
            return
        lock: Any = contextlib.nullcontext()
        if (db := self._sqlite_path()) is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            lock = _file_lock(db.with_name(db.name + ".lock"))
        with lock:
            SqlAlchemyStore(self.tracking_uri, self.resolved_artifact_root() or "./mlruns")
            registry = self.registry_uri or self.tracking_uri
            if registry.split(":", 1)[0].split("+", 1)[0] in _DB_SCHEMES:
                RegistryStore(registry)

    def client(self) -> MlflowClient:
        """The explicit client every method uses (created once per resource instance, after
        the store is migrated: runs launched from the UI or a script never pass the CLI)."""
        if self._client is None:
            from mlflow import MlflowClient

            self.initialize()

            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.registry_uri or self.tracking_uri
            )
        return self._client

    # ---- tracking ------------------------------------------------------------------------
    def ensure_experiment(self, name: str) -> str:
        """Experiment id for ``name``, creating it with ``<artifact_root>/<name>`` if missing."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        root = self.resolved_artifact_root()
        try:
            return client.create_experiment(
                name, artifact_location=f"{root.rstrip('/')}/{name}" if root else None
            )
        except MlflowException:  # another step created it between our get and create
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @contextlib.contextmanager
    def start_run(
        self, experiment: str, run_name: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> Iterator[Run]:
        """Create a run and always terminate it: FINISHED, FAILED on an exception, KILLED on an
        interrupt (Dagster run termination raises a BaseException). Exceptions propagate."""
        client = self.client()
        run = client.create_run(
            self.ensure_experiment(experiment), run_name=run_name,
            tags={k: str(v) for k, v in (tags or {}).items()},
        )
        try:
            yield run
        except Exception:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
        except BaseException:
            client.set_terminated(run.info.run_id, "KILLED")
            raise
        client.set_terminated(run.info.run_id, "FINISHED")

    @staticmethod
    def lineage_tags(
        *, dagster_run_id: str, asset_key: dg.AssetKey | str, code_version: str | None = None,
        data_version: str | None = None, config_hash: str | None = None,
        commit: str | None = None, **extra: Any,
    ) -> dict[str, str]:
        """The lineage tags every run and model version carries; ``data_version`` is the
        shard-manifest hash. ``mlflow.source.git.commit`` also makes the UI show the commit."""
        commit = commit or git_commit()
        key = asset_key.to_user_string() if isinstance(asset_key, dg.AssetKey) else asset_key
        tags = {
            "dagster_run_id": dagster_run_id, "dagster_asset_key": key,
            "code_version": code_version or "unknown", "git_commit": commit,
            "data_version": data_version or "unknown", "config_hash": config_hash or "unknown",
        }
        if commit != "unknown":
            tags["mlflow.source.git.commit"] = commit
        return {**tags, **{k: str(v) for k, v in extra.items()}}

    # ---- links ---------------------------------------------------------------------------
    def ui_base(self) -> str:
        if self.ui_url:
            return self.ui_url.rstrip("/")
        return self.tracking_uri.rstrip("/") if self.tracking_uri.startswith(("http://", "https://")) else ""

    def run_url(self, run_id: str) -> str:
        """The run's page in the MLflow UI, or "" when no UI is configured."""
        if not self.ui_base():
            return ""
        experiment_id = self.client().get_run(run_id).info.experiment_id
        return f"{self.ui_base()}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_version_url(self, name: str, version: str | int) -> str:
        return f"{self.ui_base()}/#/models/{name}/versions/{version}" if self.ui_base() else ""

    def dagster_run_url(self, dagster_run_id: str) -> str:
        return f"{self.dagster_ui_url.rstrip('/')}/runs/{dagster_run_id}" if self.dagster_ui_url else ""

    def link_version_to_dagster(self, name: str, version: str | int, dagster_run_id: str, asset_key: str) -> None:
        """The model version's description (markdown in the MLflow UI) names the Dagster run
        and asset that made it, as a link when the Dagster UI's address is known."""
        url = self.dagster_run_url(dagster_run_id)
        run = f"[{dagster_run_id}]({url})" if url else f"`{dagster_run_id}`"
        self.client().update_model_version(
            name, str(version), description=f"Materialized by Dagster run {run}, asset `{asset_key}`."
        )
        if url:
            self.client().set_model_version_tag(name, str(version), "dagster_run_url", url)

    # ---- models and registry -------------------------------------------------------------
    def log_pyfunc_model(
        self, run_id: str, name: str, python_model: Any, artifacts: dict[str, str] | None = None,
        registered_model_name: str | None = None, input_example: Any = None,
        signature: Any = None, code_paths: list[str] | None = None,
        pip_requirements: list[str] | str | None = None, tags: Mapping[str, str] | None = None,
    ) -> tuple[ModelInfo, str | None]:
        """Log a pyfunc LoggedModel for ``run_id`` and optionally register it; returns
        ``(model_info, version)`` where version is None when not registered.

        ``mlflow.pyfunc.log_model`` reads the global tracking URI and the active run (and
        ``mlflow.start_run(run_id=...)`` marks the run FINISHED on exit), so this does the same
        steps on our client instead: ``create_logged_model`` in the run's experiment,
        ``pyfunc.save_model`` to a temp dir, upload, link the model as a run output,
        finalize READY, ``create_model_version(source="models:/<model_id>")`` (the one step
        that needs the global URI briefly, see ``_global_tracking_uri``). The run's
        lineage tags (plus ``tags``) go onto the LoggedModel and the model version.
        ``artifacts`` must be local paths. Without ``pip_requirements`` MLflow infers them in
        a subprocess (a few seconds). Input-example serving validation is not run.
        """
        import mlflow.pyfunc
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.exceptions import MlflowException
        from mlflow.models import Model

        client = self.client()
        run = client.get_run(run_id)
        model_tags = {k: v for k, v in run.data.tags.items() if k in LINEAGE_TAG_KEYS}
        model_tags.update({k: str(v) for k, v in (tags or {}).items()})
        logged = client.create_logged_model(
            experiment_id=run.info.experiment_id, name=name, source_run_id=run_id,
            tags=model_tags, params=dict(run.data.params),
        )
        mlflow_model = Model(
            artifact_path=logged.artifact_location, run_id=run_id,
            model_uuid=logged.model_id, model_id=logged.model_id,
        )
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, "model")
                with _quiet_pyfunc_save():
                    mlflow.pyfunc.save_model(
                        path=local, python_model=python_model, artifacts=artifacts,
                        code_paths=code_paths, input_example=input_example, signature=signature,
                        pip_requirements=pip_requirements, mlflow_model=mlflow_model,
                    )
                client.log_model_artifacts(logged.model_id, local)
            client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        except BaseException:
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
        logged = client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        info = mlflow_model.get_model_info(logged)
        if not registered_model_name:
            return info, None
        try:
            client.create_registered_model(registered_model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        with _global_tracking_uri(self.tracking_uri):
            mv = client.create_model_version(
                registered_model_name, source=f"models:/{logged.model_id}", run_id=run_id,
                tags=model_tags, model_id=logged.model_id,
            )
        info.registered_model_version = mv.version
        return info, str(mv.version)

    def download_version(self, name: str, alias_or_version: str | int, dst_dir: str
                         ) -> tuple[str, ModelVersion]:
        """Download a registered version's model folder: ``(local_path, model_version)``.

        ``mlflow.pyfunc.load_model("models:/...")`` resolves the registry through the global
        URIs even via ``download_artifacts(tracking_uri=...)``, so resolve the version's
        storage location with our client and download that instead. In a fresh process with
        MLFLOW_TRACKING_URI set, plain ``mlflow.pyfunc.load_model(model_uri(...))`` is fine.
        """
        import mlflow.artifacts

        client = self.client()
        mv = resolve_version(client, name, alias_or_version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(name, str(mv.version)),
            dst_path=dst_dir,
            tracking_uri=self.tracking_uri,
        )
        return local, mv

    def load_pyfunc_model(
        self, name: str, alias_or_version: str | int, dst_dir: str | None = None
    ) -> tuple[Any, ModelVersion]:
        """Load a registered version in-process, returning ``(pyfunc_model, model_version)``
        (the version carries run id and lineage tags for galleries).

        Without ``dst_dir`` the download goes to a temporary folder that is removed once the
        model is in memory: every gallery loads a version, and a scheduled run's downloads
        would otherwise pile up in /tmp. The model's code folder, which MLflow puts first on
        ``sys.path`` while loading, is taken off again: this process imports the project's own.
        """
        import mlflow.pyfunc

        path_before = list(sys.path)
        with contextlib.ExitStack() as stack:
            folder = dst_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="mlflow-model-"))
            try:
                local, mv = self.download_version(name, alias_or_version, folder)
                return mlflow.pyfunc.load_model(local), mv
            finally:
                sys.path[:] = path_before

    def download_bundle(self, name: str, alias_or_version: str | int, dst_dir: str | Path
                        ) -> tuple[Path, ModelVersion]:
        """The weights file a version was registered with (its pyfunc's `bundle` artifact),
        downloaded under ``dst_dir`` and checked against the version's ``bundle_sha256`` tag."""
        from common.hashing import sha256_file

        local, mv = self.download_version(name, alias_or_version, str(dst_dir))
        found = sorted(Path(local).glob("artifacts/*.pt"))
        if len(found) != 1:
            raise LookupError(f"{name} version {mv.version}: expected one bundle under {local}/artifacts, found {found}")
        expected = mv.tags.get("bundle_sha256")
        if expected and sha256_file(found[0]) != expected:
            raise ValueError(f"{name} version {mv.version}: {found[0]} does not match its bundle_sha256 tag")
        return found[0], mv

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point ``alias`` (champion/challenger; registry stages are deprecated) at a version."""
        self.client().set_registered_model_alias(name, alias, str(version))

    def get_version_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        """The ModelVersion behind ``name@alias``, or None if the alias (or model) is missing."""
        return version_by_alias(self.client(), name, alias)

    @staticmethod
    def model_uri(name: str, alias_or_version: str | int) -> str:
        """``models:/name/3`` for a version number, ``models:/name@alias`` otherwise."""
        ref = str(alias_or_version)
        return f"models:/{name}/{ref}" if ref.isdigit() else f"models:/{name}@{ref}"


def registry_for(data_root: str | os.PathLike) -> MlflowRegistry:
    """The registry every entry point uses: `$MLFLOW_TRACKING_URI` when set (a tracking server, which
    then chooses artifact locations), else a SQLite store under the data root; with links to the UIs
    when `atelier ui` named them. Importable without the code location (the gallery server uses it)."""
    links = {"ui_url": os.environ.get(MLFLOW_UI_ENV, ""), "dagster_ui_url": os.environ.get(DAGSTER_UI_ENV, "")}
    if server := os.environ.get(TRACKING_URI_ENV):
        return MlflowRegistry(tracking_uri=server, registry_uri=os.environ.get(REGISTRY_URI_ENV, ""), **links)
    tracking_uri, artifact_root = local_store(data_root)
    return MlflowRegistry(tracking_uri=tracking_uri, artifact_root=str(artifact_root), **links)
