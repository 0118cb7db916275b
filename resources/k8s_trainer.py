"""The trainer in a Kubernetes pod of its own, through `dagster_k8s.PipesK8sClient`
(docs/deploy.md section 3, route C).

Only `python -m models.train` moves: the step that hands over the `TrainingRequest` stays where
it runs (a run pod on a CPU node) and keeps the MLflow work, while the pod gets the GPU and
reports its log lines, metric windows and outcome back over Dagster Pipes. The pod mounts the
shared data volume at the same path as the run pods, because the request, the shard manifest and
the run folder are paths under the data root.

Needs the project's `k8s` extra (dagster-k8s); it is imported only when a pod is launched.
"""
from __future__ import annotations

from pathlib import Path

import dagster as dg

from resources.trainer import TrainerLauncher

DATA_VOLUME = "atelier-data"
GPU_RESOURCE = "nvidia.com/gpu"
# the taint that GPU node pools usually carry; the pod tolerates it when it asks for a GPU
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


class K8sTrainerLauncher(TrainerLauncher):
    """Runs each training in a pod: `image` is the code-location image (docs/deploy/Dockerfile),
    whose `python` has the project installed. `gpus=0` gives a CPU-only pod. The defaults ask
    for what docs/deploy/op_tags-gpu.yaml asks for. `load_incluster_config=False` reads
    `kubeconfig_file` instead (empty: the default kubeconfig)."""

    image: str = ""
    namespace: str = "atelier"
    data_claim: str = "atelier-data"  # the ReadWriteMany PersistentVolumeClaim every run pod mounts
    data_mount: str = "/data"  # the data root's path, in run pods and in the trainer's pod
    gpus: int = 1
    cpu: str = "4"
    memory: str = "16Gi"
    memory_limit: str = "24Gi"
    gpu_node_label: str = "nvidia.com/gpu.present"  # NVIDIA GPU feature discovery's node label
    load_incluster_config: bool = True
    kubeconfig_file: str = ""

    def command(self, request_path: Path, manifest: Path, run_dir: Path) -> list[str]:
        """The subprocess command with the image's `python` in place of this process's interpreter."""
        return ["python", *super().command(request_path, manifest, run_dir)[1:]]

    def resources(self) -> dict:
        requests, limits = {"cpu": self.cpu, "memory": self.memory}, {"memory": self.memory_limit}
        if self.gpus:  # an extended resource: requests must equal limits
            requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(self.gpus)
        return {"requests": requests, "limits": limits}

    def base_pod_spec(self) -> dict:
        """The pod spec that dagster-k8s completes with the image, command and Pipes environment."""
        spec = {
            "containers": [{"name": "trainer", "resources": self.resources(),
                            "volume_mounts": [{"name": DATA_VOLUME, "mount_path": self.data_mount}]}],
            "volumes": [{"name": DATA_VOLUME, "persistent_volume_claim": {"claim_name": self.data_claim}}],
        }
        if self.gpus:
            spec.update(node_selector={self.gpu_node_label: "true"}, tolerations=[dict(GPU_TOLERATION)])
        return spec

    def run_pipes(self, context: dg.AssetExecutionContext, command: list[str], env: dict[str, str]):
        if not self.image:
            raise dg.Failure("the Kubernetes trainer needs an image: set `image` on the trainer resource "
                             "(ATELIER_TRAINER_IMAGE when ATELIER_TRAINER_MODE=k8s)")
        from dagster_k8s import PipesK8sClient

        client = PipesK8sClient(load_incluster_config=self.load_incluster_config,
                                kubeconfig_file=None if self.load_incluster_config else (self.kubeconfig_file or None))
        return client.run(context=context, image=self.image, command=command, namespace=self.namespace,
                          env=env, base_pod_spec=self.base_pod_spec())
