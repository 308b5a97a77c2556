"""A staging vLLM server started on the Kubernetes cluster the load stage runs in, then torn down.

`serve_on_cluster` creates the Deployment and Service of deploy.staging, waits until vLLM's /health
readiness probe passes, yields a Server the load test drives through the Service, and deletes both
whatever happened, with the pod's log kept. What a step that was killed left behind is reclaimed:
a server's name follows from its model folder, so the next attempt replaces it, and in a pod the
Deployment is owned by the step's pod, so Kubernetes deletes it with that pod.
"""

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from awq_release.errors import ServerError
from deploy.server import Server, log_tail
from deploy.staging import STAGING_IMAGE, GPUNodes, SharedVolume, endpoint, staging_manifests

POLL_S = 5.0  # between two looks at a starting or deleted server
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# What serve_on_cluster asks of the API server: deploy/kubernetes/staging-rbac.yaml grants exactly this.
PERMISSIONS = {
    ("apps", "deployments"): ("create", "get", "delete"),
    ("", "services"): ("create", "delete"),
    ("", "pods"): ("get", "list"),
    ("", "pods/log"): ("get",),
}
# A container waiting for one of these will not start without a change: the image, a secret or vLLM's arguments.
FATAL_WAITING = {
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}


@dataclass(frozen=True)
class Staging:
    """The load stage's servers as Deployments on the target GPU nodes instead of processes in the
    stage's own pod (the release policy's `validation.load.staging`)."""

    image: str = STAGING_IMAGE  # a vLLM OpenAI server image: its entrypoint takes vLLM's flags
    namespace: str | None = None  # None: the namespace of the pod the stage runs in
    volume: SharedVolume = SharedVolume()  # where the servers read the model, at the path the stage sees it
    startup_timeout_s: float = 1800.0  # a GPU node to scale up, the image to pull, the model to load
    nodes: GPUNodes | None = None  # the policy's target_gpu; the orchestrator fills it in


def server_name(model_dir: str | Path, role: str) -> str:
    """A DNS label that follows from the model folder: a retry of the same candidate replaces what a
    killed attempt left, and two candidates tested at once never share a server."""
    digest = hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:10]
    return f"vllm-{role}-{digest}"


def pod_failure(pod) -> str | None:
    """Why a staging pod (kubernetes.client.V1Pod) will never become ready, or None while it still may."""
    status = pod.status
    if status.phase == "Failed":
        return f"pod {pod.metadata.name} failed: {status.reason}: {status.message}"
    for container in status.container_statuses or []:
        waiting = container.state.waiting if container.state else None
        if waiting and waiting.reason in FATAL_WAITING:
            return f"container {container.name}: {waiting.reason}: {waiting.message}"
        ended = container.last_state.terminated if container.last_state else None
        if container.restart_count and ended:
            return f"vLLM exited with code {ended.exit_code} ({ended.reason}) before it was ready"
    return None


def pod_progress(pods: list) -> str:
    """What the staging pods wait for: scheduling (no GPU node free yet) or their containers."""
    for pod in pods:
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                return f"pod {pod.metadata.name} not scheduled: {condition.message}"
        for container in pod.status.container_statuses or []:
            if container.state and container.state.waiting:
                return f"container {container.name} waiting: {container.state.waiting.reason}"
    return f"pod {pods[0].metadata.name} {pods[0].status.phase}, vLLM not ready yet" if pods else "no pod yet"


def restarts(pods: list) -> int:
    return sum(c.restart_count for pod in pods for c in pod.status.container_statuses or [])


class _Cluster:
    """The calls serve_on_cluster makes, on one namespace (PERMISSIONS lists them)."""

    def __init__(self, namespace: str | None):
        try:
            import kubernetes
        except ImportError as e:
            raise ServerError(
                "validation.load.staging needs the Kubernetes client: install the project with its `k8s` extra."
            ) from e
        self.errors = kubernetes.client.ApiException
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config()
        else:
            kubernetes.config.load_kube_config(os.environ.get("KUBECONFIG"))  # read now, not at import
        self.apps, self.core = kubernetes.client.AppsV1Api(), kubernetes.client.CoreV1Api()
        self.own_namespace = IN_CLUSTER_NAMESPACE.read_text().strip() if IN_CLUSTER_NAMESPACE.is_file() else None
        self.namespace = namespace or self.own_namespace
        if not self.namespace:
            raise ServerError("validation.load.staging.namespace is unset and this process runs in no pod: set it.")

    def pods(self, name: str) -> list:
        selector = f"app.kubernetes.io/instance={name}"
        return self.core.list_namespaced_pod(self.namespace, label_selector=selector).items

    def ready(self, name: str) -> bool:
        return bool(self.apps.read_namespaced_deployment(name, self.namespace).status.ready_replicas)

    def owner(self) -> list[dict]:
        """This step's own pod as the server's owner, when this process runs in a pod of the same
        namespace (Kubernetes deletes a dependent whose owner is in another namespace at once)."""
        pod_name = os.environ.get("HOSTNAME")
        if not (pod_name and self.namespace == self.own_namespace):
            return []
        try:
            pod = self.core.read_namespaced_pod(pod_name, self.namespace)
        except self.errors:
            return []
        return [{"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod.metadata.uid}]

    def create(self, deployment: dict, service: dict) -> None:
        self.core.create_namespaced_service(self.namespace, service)
        self.apps.create_namespaced_deployment(self.namespace, deployment)

    def delete(self, name: str, timeout_s: float = 300.0) -> None:
        """Delete the Deployment (its pods first) and the Service; return once the Deployment is gone,
        so that its GPUs are free for the next server."""
        for call in (self.apps.delete_namespaced_deployment, self.core.delete_namespaced_service):
            try:
                call(name, self.namespace, propagation_policy="Foreground")
            except self.errors as e:
                if e.status != 404:
                    raise
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.apps.read_namespaced_deployment(name, self.namespace)
            except self.errors as e:
                if e.status == 404:
                    return
                raise
            time.sleep(POLL_S)
        raise ServerError(f"Deployment {self.namespace}/{name} still exists {timeout_s:.0f} s after its deletion.")

    def save_logs(self, name: str, path: Path) -> None:
        """Each pod's vLLM log, its crashed run's too, into `path`; a log that cannot be read says why."""
        try:
            pods = self.pods(name)
        except self.errors as e:
            path.write_text(f"(the pods could not be listed: {e.status} {e.reason})\n")
            return
        parts = []
        for pod in pods:
            for previous in (True, False) if restarts([pod]) else (False,):
                try:
                    # The raw reply: the client's decoded one is the repr of its bytes in some releases.
                    reply = self.core.read_namespaced_pod_log(
                        pod.metadata.name,
                        self.namespace,
                        container="vllm",
                        previous=previous,
                        tail_lines=5000,
                        _preload_content=False,
                    )
                    text = reply.data.decode(errors="replace")
                except self.errors as e:
                    text = f"(log unavailable: {e.status} {e.reason})"
                parts.append(f"=== pod {pod.metadata.name}{' (before its restart)' if previous else ''}\n{text}")
        path.write_text("\n".join(parts) or "(no pod was created)\n")


def _refused(error, where: str) -> ServerError:
    """A Kubernetes API refusal as the cause and its fix."""
    fix = " (grant the step's service account deploy/kubernetes/staging-rbac.yaml)" if error.status == 403 else ""
    return ServerError(f"The Kubernetes API refused the {where}: {error.status} {error.reason}{fix}: {error.body}")


@contextmanager
def serve_on_cluster(engine: dict, role: str, staging: Staging, log_path: str | Path) -> Iterator[Server]:
    """Serve `engine` (deploy.engine.engine_args; its model on the shared volume) as a staging
    Deployment; yield it once ready; delete it whatever happened, its log written to `log_path`. A
    pod that cannot start fails at once with the cause; one that restarted under load fails too."""
    if staging.nodes is None:
        raise ServerError(
            "validation.load.staging has no GPU nodes: the release job places it on the policy's target_gpu. "
            "Outside the job (awq-release validate), start the server with `awq-release staging` and set load.endpoint."
        )
    cluster, name = _Cluster(staging.namespace), server_name(engine["model"], role)
    where = f"staging server {cluster.namespace}/{name}"
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    deployment, service = staging_manifests(
        name, engine, staging.image, cluster.namespace, staging.nodes, staging.volume
    )
    try:
        owner = cluster.owner()
        for manifest in (deployment, service):
            manifest["metadata"] = {**manifest["metadata"], "ownerReferences": owner}
        cluster.delete(name)  # what a killed attempt at this candidate left
    except cluster.errors as e:
        raise _refused(e, where) from e
    try:
        cluster.create(deployment, service)
        deadline = time.monotonic() + staging.startup_timeout_s
        while not cluster.ready(name):
            pods = cluster.pods(name)
            failure = next((f for f in map(pod_failure, pods) if f), None)
            if failure or time.monotonic() > deadline:
                cluster.save_logs(name, log_path)
                why = failure or f"not ready after {staging.startup_timeout_s:.0f} s: {pod_progress(pods)}"
                raise ServerError(f"The {where} did not start: {why}; log {log_path}:\n{log_tail(log_path)}")
            time.sleep(POLL_S)
        started = restarts(cluster.pods(name))
        yield Server(
            endpoint(name, cluster.namespace), engine.get("served-model-name", engine["model"]), log_path, None
        )
        if restarts(cluster.pods(name)) > started:
            raise ServerError(f"The {where} restarted while it was being load-tested; log {log_path}")
    except cluster.errors as e:
        raise _refused(e, where) from e
    finally:
        cluster.save_logs(name, log_path)
        cluster.delete(name)
