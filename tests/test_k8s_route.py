"""The Kubernetes route of docs/deploy.md through dagster-k8s's own code, with no cluster.

- The `k8s` extra is what is installed, at pyproject.toml's versions.
- docs/deploy/run-config-k8s-executor.yaml is valid for the k8s_job_executor's own config schema,
  and for the `ingest` and `main` jobs of a code location started with `ATELIER_EXECUTOR=k8s`.
- The step pods of `ingest` (one Kubernetes Job per step, for a partition when the job is
  partitioned) and of the training steps are built by dagster-k8s's `K8sStepHandler.launch_step`
  from docs/deploy/dagster-k8s.yaml's K8sRunLauncher and that run config. Only the Kubernetes API
  call that would create the Job is replaced, and it records the Job instead.
- The Pipes trainer route: a training asset's `K8sTrainerLauncher` goes through
  `PipesK8sClient.run`, which builds the trainer's pod; the pod creation is recorded the same way.

The kubeconfig is a file written here; loading it opens no connection. These tests need the
project's `k8s` extra, which scripts/setup.sh installs.
"""

import importlib.metadata
import json
from unittest import mock

import dagster as dg
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.execution.api import create_execution_plan
from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import create_context_free_log_manager
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.executor.init import InitExecutorContext
from dagster._core.executor.step_delegating.step_handler.base import StepHandlerContext
from dagster._grpc.types import ExecuteStepArgs
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.client import DagsterKubernetesClient
from dagster_k8s.pipes import get_pod_name

from models.train import TrainingRequest
from pipelines import definitions
from resources.k8s_trainer import K8sTrainerLauncher
from test_deploy_docs import ROOT, TRAINING_ASSETS, load, pyproject_pins

IMAGE = "registry.example/atelier:test"  # the code location's image (DAGSTER_CURRENT_IMAGE under Helm)
EXECUTOR_RUN_CONFIG = "run-config-k8s-executor.yaml"
PARTITION = "dagster/partition"

FAKE_KUBECONFIG = {
    "apiVersion": "v1", "kind": "Config", "current-context": "test",
    "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:6443"}}],
    "users": [{"name": "test", "user": {"token": "not-a-token"}}],
    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "atelier"}}],
}


@pytest.fixture
def kubeconfig(tmp_path) -> str:
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump(FAKE_KUBECONFIG))
    return str(path)


def gpu_config() -> dict:
    return load("op_tags-gpu.yaml")["dagster-k8s/config"]


# ---- versions -------------------------------------------------------------------------------


def test_the_k8s_extra_is_installed_at_the_pinned_versions():
    """dagster-k8s pins one exact dagster: the installed set is pyproject's, not a resolver's pick."""
    for name, version in {**pyproject_pins(), **pyproject_pins("k8s")}.items():
        if name.startswith("dagster"):
            assert importlib.metadata.version(name) == version, name
    assert importlib.metadata.version("dagster-pipes") == pyproject_pins()["dagster"]


# ---- the executor's run config -----------------------------------------------------------------


def test_executor_run_config_passes_the_k8s_executors_own_schema():
    config = load(EXECUTOR_RUN_CONFIG)["execution"]["config"]
    schema = k8s_job_executor.config_schema.config_type
    result = validate_config(schema, config)
    assert result.success, result.errors
    assert not validate_config(schema, {**config, "max_concurency": 4}).success  # misspelt key
    # the per-step sections are checked too; inside container_config and pod_spec_config the schema is
    # permissive, and dagster-k8s checks those keys when it builds a pod (the step-pod tests below)
    broken = {**config, "per_step_k8s_config": {"image_gan": {"container_conf": {}}}}
    assert not validate_config(schema, broken).success


def test_executor_run_config_gives_every_training_step_the_gpu_of_op_tags():
    per_step = load(EXECUTOR_RUN_CONFIG)["execution"]["config"]["per_step_k8s_config"]
    assert set(per_step) <= TRAINING_ASSETS and {"image_gan", "music_vae", "painting_gan", "video_rnn"} <= set(per_step)
    assert all(value == gpu_config() for value in per_step.values())


def k8s_code_location(monkeypatch) -> dg.Definitions:
    """pipelines/definitions.py's Definitions as a code location with ATELIER_EXECUTOR=k8s builds them."""
    monkeypatch.setenv(definitions.EXECUTOR_ENV, "k8s")
    executor = definitions.build_executor()
    assert executor is k8s_job_executor
    defs = definitions.defs
    return dg.Definitions(assets=defs.assets, jobs=defs.jobs, schedules=defs.schedules, sensors=defs.sensors,
                          resources=defs.resources, loggers=defs.loggers, executor=executor)


@pytest.mark.parametrize("job_name", ["ingest", "main"])
def test_executor_run_config_is_valid_for_the_jobs_under_the_k8s_executor(monkeypatch, job_name):
    job = k8s_code_location(monkeypatch).resolve_job_def(job_name)
    assert job.executor_def is k8s_job_executor
    assert dg.validate_run_config(job, load(EXECUTOR_RUN_CONFIG))
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(job, {"execution": {"config": {"max_concurency": 4}}})


def test_executor_env_refuses_unknown_values(monkeypatch):
    monkeypatch.setenv(definitions.EXECUTOR_ENV, "k8")
    with pytest.raises(ValueError, match="ATELIER_EXECUTOR"):
        definitions.build_executor()
    monkeypatch.delenv(definitions.EXECUTOR_ENV)
    assert definitions.build_executor().name == dg.multi_or_in_process_executor.name


# ---- step pods, through dagster-k8s's K8sStepHandler ------------------------------------------


@pytest.fixture
def k8s_instance(tmp_path, kubeconfig):
    """A DagsterInstance loaded from docs/deploy/dagster-k8s.yaml. Two changes, both because
    nothing here is a cluster: SQLite storage in place of Postgres, and the test kubeconfig in
    place of the in-cluster config."""
    config = load("dagster-k8s.yaml")
    config["storage"] = {"sqlite": {"base_dir": str(tmp_path / "storage")}}
    config["run_launcher"]["config"].update(load_incluster_config=False, kubeconfig_file=kubeconfig)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_launcher, K8sRunLauncher)
        yield instance


def partition_key_for(job: dg.JobDefinition, instance: dg.DagsterInstance) -> str | None:
    """A partition of the job to run (the first), or None while the job is not partitioned."""
    partitions = job.partitions_def
    if partitions is None:
        return None
    if isinstance(partitions, dg.DynamicPartitionsDefinition):
        instance.add_dynamic_partitions(partitions.name, ["k8s-route-test"])
    keys = partitions.get_partition_keys(dynamic_partitions_store=instance)
    assert keys, f"{job.name} is partitioned but has no partition to run"
    return keys[0]


def launch_step_jobs(instance, defs: dg.Definitions, job_name: str, run_config: dict,
                     only: set[str] | None = None) -> tuple[dg.DagsterRun, dict]:
    """Every step of one run of `job_name` (or the steps in `only`) launched through the
    k8s_job_executor that `run_config` configures: step key -> the Kubernetes Job it creates."""
    job = defs.resolve_job_def(job_name)
    partition = partition_key_for(job, instance)
    tags = {PARTITION: partition} if partition else {}
    origin = ReconstructableRepository.for_module(
        "pipelines.definitions", "defs", working_directory=str(ROOT), container_image=IMAGE,
    ).get_reconstructable_job(job_name).get_python_origin()
    plan = create_execution_plan(job, run_config=run_config, tags=tags)
    run = instance.create_run_for_job(job, run_config=run_config, tags=tags, job_code_origin=origin,
                                      execution_plan=plan)
    executor = k8s_job_executor.executor_creation_fn(InitExecutorContext(
        job=InMemoryJob(job), executor_def=k8s_job_executor, instance=instance,
        executor_config=dg.validate_run_config(job, run_config)["execution"][k8s_job_executor.name],  # with defaults
    ))
    handler = executor._step_handler  # noqa: SLF001: the handler the executor built from the config
    batch_api = mock.MagicMock()  # the one stand-in: the API call that would create the Job
    handler._api_client = DagsterKubernetesClient.production_client(batch_api_override=batch_api)  # noqa: SLF001
    plan_context = PlanOrchestrationContext(
        plan_data=PlanData(job=InMemoryJob(job), dagster_run=run, instance=instance, execution_plan=plan),
        log_manager=create_context_free_log_manager(instance, run), executor=executor, output_capture=None,
    )
    jobs = {}
    for step in plan.steps:
        if only is not None and step.key not in only:
            continue
        context = StepHandlerContext(instance=instance, plan_context=plan_context, steps=plan.steps,
                                     execute_step_args=ExecuteStepArgs(origin, run.run_id, [step.key]),
                                     dagster_run=run)
        list(handler.launch_step(context))
        [(_, _, call)] = batch_api.method_calls[len(jobs):]
        assert call["namespace"] == "atelier"
        jobs[step.key] = call["body"]
    return run, jobs


def env_of(container) -> dict:
    return {variable.name: variable.value for variable in container.env or []}


@pytest.mark.parametrize("job_name", ["ingest", "ingest_parts"])  # whole corpora, and one part of each
def test_ingest_runs_one_pod_per_step_with_the_guides_settings(monkeypatch, k8s_instance, job_name):
    defs = k8s_code_location(monkeypatch)
    run, jobs = launch_step_jobs(k8s_instance, defs, job_name, load(EXECUTOR_RUN_CONFIG))
    ingest_steps = {step.key for step in create_execution_plan(defs.resolve_job_def(job_name),
                                                               run_config=load(EXECUTOR_RUN_CONFIG),
                                                               tags=run.tags).steps}
    assert set(jobs) == ingest_steps and len(ingest_steps) >= 4  # image, painting, midi, video corpora
    assert len({job.metadata.name for job in jobs.values()}) == len(jobs)  # a Kubernetes Job per step
    launcher = load("dagster-k8s.yaml")["run_launcher"]["config"]
    for step_key, job in jobs.items():
        pod = job.spec.template.spec
        [container] = pod.containers
        assert container.image == IMAGE  # job_image unset: the code location's image
        assert container.args[:3] == ["dagster", "api", "execute_step"]
        env = env_of(container)
        assert env["ATELIER_DATA_ROOT"] == "/data"
        assert (env["DAGSTER_RUN_JOB_NAME"], env["DAGSTER_RUN_STEP_KEY"]) == (job_name, step_key)
        assert [source.secret_ref.name for source in container.env_from] == ["atelier-mlflow"]
        assert [(m.name, m.mount_path) for m in container.volume_mounts] == [("atelier-data", "/data")]
        assert pod.volumes[0].persistent_volume_claim.claim_name == "atelier-data"
        assert pod.service_account_name == launcher["service_account_name"]
        # no per-step setting for ingest steps: they get the run pod's size, and no GPU
        expected = launcher["run_k8s_config"]["container_config"]["resources"]
        assert container.resources.requests == expected["requests"]
        assert container.resources.limits == expected["limits"]
        assert not pod.node_selector and not pod.tolerations
        labels = job.metadata.labels
        assert (labels["dagster/job"], labels["dagster/op"], labels["dagster/run-id"]) == (job_name, step_key, run.run_id)
        assert job.spec.ttl_seconds_after_finished == launcher["run_k8s_config"]["job_spec_config"]["ttl_seconds_after_finished"]
    partition = run.tags.get(PARTITION)
    assert partition == partition_key_for(defs.resolve_job_def(job_name), k8s_instance)
    assert (partition is not None) == (job_name == "ingest_parts")
    # the step pods read the partition from the run (by run id), as on a cluster
    assert k8s_instance.get_run_by_id(run.run_id).tags.get(PARTITION) == partition


def test_training_steps_get_a_gpu_pod_from_the_executor_run_config(monkeypatch, k8s_instance):
    defs = k8s_code_location(monkeypatch)
    _, jobs = launch_step_jobs(k8s_instance, defs, "main", load(EXECUTOR_RUN_CONFIG), only=TRAINING_ASSETS)
    assert set(jobs) == TRAINING_ASSETS
    gpu = gpu_config()
    for job in jobs.values():
        pod = job.spec.template.spec
        [container] = pod.containers
        assert container.resources.requests == gpu["container_config"]["resources"]["requests"]
        assert container.resources.limits == gpu["container_config"]["resources"]["limits"]
        assert pod.node_selector == gpu["pod_spec_config"]["node_selector"]
        tolerations = [{k: v for k, v in t.to_dict().items() if v is not None} for t in pod.tolerations]
        assert tolerations == gpu["pod_spec_config"]["tolerations"]
        assert [(m.name, m.mount_path) for m in container.volume_mounts] == [("atelier-data", "/data")]


# ---- the Pipes trainer route, through PipesK8sClient.run -------------------------------------


class PodCreated(Exception):
    """Raised by the stand-in API once the pod is recorded: there is no pod to wait for."""


def trainer_pod(tmp_path, monkeypatch, trainer: K8sTrainerLauncher, request: TrainingRequest):
    """Materialize an asset that launches `request` through `trainer`; the pod spec PipesK8sClient
    hands to the Kubernetes API, with the namespace, the run and the paths the asset used."""
    created = []

    def create_namespaced_pod(namespace, body):
        created.append((namespace, body))
        raise PodCreated()

    client = mock.MagicMock()
    client.core_api.create_namespaced_pod.side_effect = create_namespaced_pod
    monkeypatch.setattr(DagsterKubernetesClient, "production_client", staticmethod(lambda *a, **k: client))
    manifest, run_dir = tmp_path / "shards" / "manifest.json", tmp_path / "runs" / "image_gan" / "r1"

    @dg.asset(name="image_gan")
    def training_probe(context: dg.AssetExecutionContext, trainer: K8sTrainerLauncher):
        trainer.launch(context, request, manifest, run_dir)

    result = dg.materialize([training_probe], resources={"trainer": trainer}, raise_on_error=False)
    assert not result.success  # stopped where the pod would start
    [(namespace, pod)] = created
    return namespace, pod, result.run_id, manifest, run_dir


def test_trainer_pod_is_built_by_pipes_k8s_client(tmp_path, monkeypatch, kubeconfig):
    trainer = K8sTrainerLauncher(image=IMAGE, load_incluster_config=False, kubeconfig_file=kubeconfig)
    namespace, pod, run_id, manifest, run_dir = trainer_pod(
        tmp_path, monkeypatch, trainer, TrainingRequest(family="image-gan", model_config={}, threads=3))
    assert namespace == "atelier"
    named = get_pod_name(run_id, "image_gan")  # the run and the step, then a random suffix
    assert pod.metadata.name[:-10] == named[:-10]
    assert pod.spec.restart_policy == "Never"
    [container] = pod.spec.containers
    assert container.name == "trainer" and container.image == IMAGE
    assert container.command == ["python", "-m", "models.train", "--config", str(run_dir / "request.json"),
                                 "--manifest", str(manifest), "--run-dir", str(run_dir)]
    assert json.loads((run_dir / "request.json").read_text())["family"] == "image-gan"
    env = env_of(container)
    assert env["OMP_NUM_THREADS"] == "3"  # the request's threads
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= set(env)  # the Pipes session
    gpu = gpu_config()  # the defaults ask for what op_tags-gpu.yaml asks for
    assert container.resources.requests == gpu["container_config"]["resources"]["requests"]
    assert container.resources.limits == gpu["container_config"]["resources"]["limits"]
    assert pod.spec.node_selector == gpu["pod_spec_config"]["node_selector"]
    assert pod.spec.tolerations[0].key == "nvidia.com/gpu" and pod.spec.tolerations[0].effect == "NoSchedule"
    # the data root at the path the run pods use (docs/deploy/dagster-k8s.yaml)
    launcher = load("dagster-k8s.yaml")["run_launcher"]["config"]
    assert [(m.name, m.mount_path) for m in container.volume_mounts] == \
        [(m["name"], m["mount_path"]) for m in launcher["volume_mounts"]]
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == \
        launcher["volumes"][0]["persistent_volume_claim"]["claim_name"]


def test_trainer_pod_runs_torchrun_and_can_go_without_a_gpu(tmp_path, monkeypatch, kubeconfig):
    trainer = K8sTrainerLauncher(image=IMAGE, nproc_per_node=2, gpus=0, namespace="training",
                                 load_incluster_config=False, kubeconfig_file=kubeconfig)
    namespace, pod, *_ = trainer_pod(tmp_path, monkeypatch, trainer,
                                     TrainingRequest(family="image-gan", model_config={}))
    assert namespace == "training"
    [container] = pod.spec.containers
    assert container.command[:5] == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert container.command[5] == "--log-dir" and container.command[7:9] == ["-m", "models.train"]
    assert "nvidia.com/gpu" not in container.resources.requests and not pod.spec.node_selector


def test_trainer_mode_k8s_selects_the_pod_launcher(monkeypatch, tmp_path):
    monkeypatch.setenv(definitions.TRAINER_MODE_ENV, "k8s")
    monkeypatch.setenv(definitions.TRAINER_IMAGE_ENV, IMAGE)
    trainer = definitions.build_resources(str(tmp_path))["trainer"]
    assert isinstance(trainer, K8sTrainerLauncher) and trainer.image == IMAGE


def test_trainer_without_an_image_fails_before_any_pod(tmp_path):
    @dg.asset
    def training_probe(context: dg.AssetExecutionContext, trainer: K8sTrainerLauncher):
        trainer.launch(context, TrainingRequest(family="image-gan", model_config={}),
                       tmp_path / "manifest.json", tmp_path / "run")

    result = dg.materialize([training_probe], resources={"trainer": K8sTrainerLauncher()}, raise_on_error=False)
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert "ATELIER_TRAINER_IMAGE" in str(failure.step_failure_data.error.message)
