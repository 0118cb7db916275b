"""The deployment guide's config files (docs/deploy/) against the schemas their tools enforce.

- Every ``*.yaml`` under docs/deploy/ must parse with ``yaml.safe_load``.
- Instance files (dagster-local.yaml, dagster-k8s.yaml) go through dagster's own instance-config
  validation, ``dagster._core.instance.config.dagster_instance_config``, which is what
  ``DagsterInstance`` runs on ``$DAGSTER_HOME/dagster.yaml``. dagster-local.yaml is also loaded
  as a real ``DagsterInstance`` (SQLite) in a temp DAGSTER_HOME, and its queue, pool and
  monitoring values are checked against what docs/deploy.md says.
- dagster-k8s.yaml: dagster core checks the instance-level ``run_launcher: {module, class, config}``
  shape but treats the inner ``config`` as free-form; the K8sRunLauncher's own schema (and the
  ``dagster-k8s/config`` tag schema) comes from dagster-k8s, the project's ``k8s`` extra, which
  scripts/setup.sh installs. tests/test_k8s_route.py builds step and trainer pods from these files.
- workspace-grpc.yaml: dagster's workspace schema. run-config-mlflow-server.yaml: the ``main``
  job's run-config schema, plus a real in-process run. docker-compose.mlflow.yaml: the
  ``mlflow server`` arguments through MLflow's own command-line parser.
- Dockerfiles: consistency with pyproject.toml and workspace.yaml.
- deploy.md names every file, its ``# from docs/deploy/...`` excerpts match the files, and its
  Python op_tags dict equals op_tags-gpu.yaml.
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import tomllib
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._core.workspace.config_schema import process_workspace_config

from pipelines.definitions import TRAINING_ASSETS as TRAINING_ASSET_DEFS, build_resources, defs
from resources.mlflow_registry import MlflowRegistry

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "docs" / "deploy"
GUIDE = ROOT / "docs" / "deploy.md"
TRAINING_ASSETS = {asset.op.name for asset in TRAINING_ASSET_DEFS}  # the `gpu` pool


def load(name: str):
    return yaml.safe_load((DEPLOY / name).read_text())


def instance_home(tmp_path: Path, name: str, edit=None) -> Path:
    """A DAGSTER_HOME holding docs/deploy/<name> as its dagster.yaml (optionally edited)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    if edit is None:
        shutil.copy(DEPLOY / name, home / "dagster.yaml")
    else:
        config = load(name)
        edit(config)
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def pyproject_pins(extra: str | None = None) -> dict[str, str]:
    """The exact pins of pyproject.toml's dependencies, or of one optional extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["optional-dependencies"][extra] if extra else project["dependencies"]
    pins = {}
    for requirement in requirements:
        if "==" in requirement:
            name, version = requirement.split("==")
            pins[name.strip()] = version.strip()
    return pins


def lockstep_libs_version(dagster_version: str) -> str:
    """Dagster's integration libraries are released with core: dagster 1.13.27 <-> 0.29.27."""
    major, minor, patch = dagster_version.split(".")
    assert major == "1", dagster_version
    return f"0.{int(minor) + 16}.{patch}"


# ---- every file ---------------------------------------------------------------------------


def test_every_yaml_file_parses():
    files = sorted(DEPLOY.glob("*.yaml"))
    assert {f.name for f in files} >= {
        "dagster-local.yaml", "dagster-k8s.yaml", "op_tags-gpu.yaml",
        "run-config-mlflow-server.yaml", "workspace-grpc.yaml", "docker-compose.mlflow.yaml",
    }
    for path in files:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path.name


def test_guide_names_every_file():
    guide = GUIDE.read_text()
    missing = [p.name for p in DEPLOY.iterdir() if f"docs/deploy/{p.name}" not in guide]
    assert not missing, f"docs/deploy.md never mentions {missing}"


def _is_excerpt(part, whole) -> bool:
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and _is_excerpt(v, whole[k]) for k, v in part.items())
    if isinstance(part, list):
        return (isinstance(whole, list) and len(part) == len(whole)
                and all(_is_excerpt(p, w) for p, w in zip(part, whole)))
    return part == whole


def test_guide_states_the_versions_pyproject_pins():
    """deploy.md's version line and its `k8s` extra snippet are pyproject.toml's pins."""
    guide = GUIDE.read_text()
    versions = " ".join(re.search(r"^Versions: (.*?)\n\n", guide, re.S | re.M).group(1).split())
    for name, version in {**pyproject_pins(), **pyproject_pins("k8s")}.items():
        assert f"{name} {version}" in versions, f"deploy.md's version line lacks {name} {version}"
    [snippet] = re.findall(r"```toml\n# pyproject.toml\n(.*?)```", guide, re.S)
    extras = tomllib.loads(snippet)["project"]["optional-dependencies"]
    assert extras["k8s"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["k8s"]


def test_guide_excerpts_match_their_files():
    blocks = re.findall(r"```yaml\n\s*# from docs/deploy/([\w.-]+)\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) >= 5
    for name, text in blocks:
        assert _is_excerpt(yaml.safe_load(text), load(name)), f"deploy.md excerpt of {name} differs from the file"


# ---- dagster-local.yaml ---------------------------------------------------------------------


def test_local_yaml_keeps_the_starter_file_that_atelier_writes():
    """deploy.md: dagster-local.yaml keeps what `atelier` writes into a new DAGSTER_HOME."""
    from pipelines.cli import DAGSTER_YAML

    assert _is_excerpt(yaml.safe_load(DAGSTER_YAML), load("dagster-local.yaml"))


def test_local_yaml_passes_dagster_instance_validation(tmp_path):
    config, custom_class = dagster_instance_config(str(instance_home(tmp_path, "dagster-local.yaml")))
    assert custom_class is None
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


@pytest.mark.parametrize("edit, message", [
    # queue limits in two places: dagster refuses, as deploy.md section 1 says
    (lambda c: c["run_coordinator"].update(config={"max_concurrent_runs": 3}), "max_concurrent_runs"),
    (lambda c: c["run_monitoring"].update(enable=True), "enable"),                 # misspelt key
    (lambda c: c["concurrency"]["pools"].update(default_limit=-1), "default_limit"),  # out of range
])
def test_instance_validation_rejects_broken_variants(tmp_path, edit, message):
    with pytest.raises(DagsterInvalidConfigError) as error:
        dagster_instance_config(str(instance_home(tmp_path, "dagster-local.yaml", edit)))
    assert message in str(error.value)


@pytest.fixture(scope="module")
def local_instance(tmp_path_factory):
    """A real DagsterInstance (SQLite storage) loaded from docs/deploy/dagster-local.yaml."""
    home = instance_home(tmp_path_factory.mktemp("local"), "dagster-local.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def test_local_instance_loads_with_the_documented_values(local_instance):
    from dagster._core.launcher import DefaultRunLauncher
    from dagster._core.run_coordinator import QueuedRunCoordinator

    instance = local_instance
    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    assert isinstance(instance.run_launcher, DefaultRunLauncher)
    assert instance.event_log_storage.supports_global_concurrency_limits  # SQLite supports pools
    concurrency = instance.get_concurrency_config()
    assert concurrency.run_queue_config.max_concurrent_runs == 2
    assert concurrency.run_queue_config.tag_concurrency_limits == [{"key": "dagster/backfill", "limit": 1}]
    assert concurrency.pool_config.default_pool_limit == 1
    assert concurrency.pool_config.pool_granularity is None  # op granularity: enforced per step
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_max_runtime_seconds == 21600
    assert instance.run_monitoring_max_resume_run_attempts == 0
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 60
    assert {"QUEUED_RUN_COORDINATOR", "MONITORING"} <= set(instance.get_required_daemon_types())


def test_gpu_pool_gets_limit_one_and_blocks_a_second_training(local_instance):
    @dg.asset(pool="gpu")
    def training_probe():
        return None

    instance = local_instance
    assert dg.materialize([training_probe], instance=instance).success
    info = instance.event_log_storage.get_concurrency_info("gpu")
    assert (info.slot_count, info.using_default_limit) == (1, True)
    storage = instance.event_log_storage
    assert storage.claim_concurrency_slot("gpu", "run-a", "image_gan").is_claimed
    assert not storage.claim_concurrency_slot("gpu", "run-b", "music_vae").is_claimed
    storage.free_concurrency_slots_for_run("run-a")
    assert storage.claim_concurrency_slot("gpu", "run-b", "music_vae").is_claimed


def test_documented_cli_sets_an_explicit_gpu_limit(tmp_path):
    from click.testing import CliRunner
    from dagster._cli.instance import instance_cli

    home = instance_home(tmp_path, "dagster-local.yaml")
    result = CliRunner().invoke(instance_cli, ["concurrency", "set", "gpu", "1"], env={"DAGSTER_HOME": str(home)})
    assert result.exit_code == 0, result.output
    with dg.DagsterInstance.from_config(str(home)) as instance:
        info = instance.event_log_storage.get_concurrency_info("gpu")
        assert (info.limit, info.using_default_limit) == (1, False)


def test_gpu_is_the_only_pool_and_holds_exactly_the_training_assets():
    """`pools.default_limit: 1` is safe only while `gpu` is the only pool (deploy.md, section 1)."""
    job = defs.resolve_job_def("main")
    pools = {node.name: node.pool for node in job.graph.node_defs if node.pool}
    assert set(pools.values()) == {"gpu"}
    assert set(pools) == TRAINING_ASSETS


# ---- dagster-k8s.yaml -----------------------------------------------------------------------


def test_k8s_yaml_passes_dagster_instance_validation(tmp_path):
    config, _ = dagster_instance_config(str(instance_home(tmp_path, "dagster-k8s.yaml")))
    assert set(config["storage"]) == {"postgres"}
    assert config["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert launcher["config"]["env_vars"] == ["ATELIER_DATA_ROOT=/data"]
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["run_monitoring"]["enabled"] is True


def test_k8s_instance_shape_is_enforced(tmp_path):
    with pytest.raises(DagsterInvalidConfigError):  # run_launcher without its class
        dagster_instance_config(str(instance_home(tmp_path, "dagster-k8s.yaml", lambda c: c["run_launcher"].pop("class"))))


def test_k8s_run_launcher_config_against_dagster_k8s():
    import dagster_k8s
    from dagster._config import validate_config

    config = load("dagster-k8s.yaml")["run_launcher"]["config"]
    result = validate_config(dagster_k8s.K8sRunLauncher.config_type(), config)
    assert result.success, result.errors
    broken = {**config, "job_namespaces": "typo"}
    assert not validate_config(dagster_k8s.K8sRunLauncher.config_type(), broken).success


# ---- op_tags-gpu.yaml -----------------------------------------------------------------------


def test_op_tags_have_the_shape_the_guide_shows():
    tags = load("op_tags-gpu.yaml")
    assert list(tags) == ["dagster-k8s/config"]
    k8s = tags["dagster-k8s/config"]
    assert set(k8s) == {"container_config", "pod_spec_config"}
    resources = k8s["container_config"]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["pod_spec_config"]["tolerations"]

    guide = GUIDE.read_text()
    [literal] = re.findall(r"GPU_OP_TAGS = (\{.*?\n\})\n", guide, re.S)
    assert ast.literal_eval(literal) == tags


def test_op_tags_are_accepted_on_a_gpu_pool_asset():
    tags = load("op_tags-gpu.yaml")

    @dg.asset(pool="gpu", op_tags=tags)
    def training_probe():
        return None

    assert training_probe.op.pool == "gpu"
    assert json.loads(training_probe.op.tags["dagster-k8s/config"]) == tags["dagster-k8s/config"]


def test_gpu_tags_build_a_pod_with_one_gpu():
    """The op tag (route B) and the JSON-encoded run tag (route A, as deploy.md's CLI snippet
    builds it) parse with dagster-k8s's own parser, and the Kubernetes Job it builds asks for the GPU."""
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

    run_tags = {key: json.dumps(value) for key, value in load("op_tags-gpu.yaml").items()}
    user_config = get_user_defined_k8s_config(run_tags)
    job_config = DagsterK8sJobConfig(job_image="atelier:test", dagster_home="/opt/dagster/dagster_home",
                                     instance_config_map="dagster-instance")
    job = construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_run"], "dagster-run-test",
                                    user_defined_k8s_config=user_config)
    pod = job.spec.template.spec
    assert pod.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert pod.tolerations[0].key == "nvidia.com/gpu"


# ---- run-config-mlflow-server.yaml ----------------------------------------------------------


def test_mlflow_run_config_is_valid_for_the_main_job(monkeypatch):
    job, run_config = defs.resolve_job_def("main"), load("run-config-mlflow-server.yaml")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(DagsterInvalidConfigError, match="MLFLOW_TRACKING_URI"):  # unset: refused up front
        dg.validate_run_config(job, run_config)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert dg.validate_run_config(job, run_config)
    with pytest.raises(DagsterInvalidConfigError):  # a misspelt field is refused too
        dg.validate_run_config(job, {"resources": {"mlflow": {"config": {"tracking_url": "http://mlflow:5000"}}}})


def test_mlflow_run_config_points_the_resource_at_the_server(tmp_path, monkeypatch):
    seen = {}

    @dg.asset
    def registry_probe(mlflow: MlflowRegistry):
        seen.update(uri=mlflow.tracking_uri, artifact_root=mlflow.resolved_artifact_root())

    job = dg.Definitions(assets=[registry_probe], resources=build_resources(str(tmp_path))).resolve_implicit_global_asset_job_def()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert job.execute_in_process(run_config=load("run-config-mlflow-server.yaml")).success
    assert seen == {"uri": "http://mlflow:5000", "artifact_root": ""}
    # without the run config the code location's default stays SQLite (deploy.md, section 4)
    assert job.execute_in_process().success
    assert seen["uri"].startswith("sqlite:///") and seen["artifact_root"].endswith("artifacts")


# ---- workspace, compose, Dockerfiles ---------------------------------------------------------


def test_workspace_yaml_passes_dagster_workspace_validation():
    result = process_workspace_config(load("workspace-grpc.yaml"))
    assert result.success, result.errors
    [entry] = result.value["load_from"]
    assert entry["grpc_server"]["location_name"] == "atelier"


def compose_with_env() -> dict:
    """docker-compose.mlflow.yaml with ${VAR} taken from mlflow-server.env, as compose would."""
    env = dict(
        line.split("=", 1) for line in (DEPLOY / "mlflow-server.env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    text = (DEPLOY / "docker-compose.mlflow.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)\}", text))
    assert used <= set(env), f"undefined in mlflow-server.env: {used - set(env)}"
    return yaml.safe_load(re.sub(r"(?<!\$)\$\{(\w+)\}", lambda m: env[m.group(1)], text))


def test_compose_mlflow_command_parses_with_mlflows_cli():
    import click
    from mlflow.cli import cli

    service = compose_with_env()["services"]["mlflow"]
    command = service["command"]
    assert command[:2] == ["mlflow", "server"]
    server = cli.commands["server"]
    params = server.make_context("server", list(command[2:])).params
    assert params["backend_store_uri"].startswith("postgresql://")
    assert params["serve_artifacts"] is True
    assert params["artifacts_destination"].startswith("s3://")
    # Atelier's containers call http://mlflow:5000; MLflow 3 rejects Host headers not listed
    assert "mlflow:5000" in params["allowed_hosts"].split(",")
    assert service["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    with pytest.raises(click.UsageError):  # the parser does reject unknown flags
        server.make_context("server", ["--artifact-destination", "s3://x"])


def test_dockerfiles_agree_with_the_project():
    pins, k8s_pins = pyproject_pins(), pyproject_pins("k8s")
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    lockstep = lockstep_libs_version(pins["dagster"])
    assert pins["dagster-webserver"] == pins["dagster"]
    assert k8s_pins == {"dagster-k8s": lockstep, "dagster-postgres": lockstep}  # the `k8s` extra
    # the image takes the Kubernetes libraries from that extra, never from versions of its own
    assert 'pip install --no-cache-dir ".[k8s]"' in dockerfile
    assert "dagster-k8s==" not in dockerfile and "dagster-postgres==" not in dockerfile
    assert f'"torch=={pins["torch"]}"' in dockerfile

    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    port = load("workspace-grpc.yaml")["load_from"][0]["grpc_server"]["port"]
    cmd = json.loads(re.search(r"^CMD (\[.*?\])", dockerfile, re.S | re.M).group(1).replace("\\\n", ""))
    assert cmd[cmd.index("-m") + 1] == module
    assert cmd[cmd.index("-p") + 1] == str(port)

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in {p.rstrip("*") for p in packages}:
        assert f"COPY {package} ./{package}" in dockerfile, package

    assert f'"mlflow=={pins["mlflow"]}"' in (DEPLOY / "Dockerfile.mlflow").read_text()
    assert f"atelier-mlflow:{pins['mlflow']}" in (DEPLOY / "docker-compose.mlflow.yaml").read_text()
