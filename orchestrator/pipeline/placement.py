"""Where the release job's steps run: in the run's own process here, a Celery task on the worker of
its queue across machines, a container per step on one Docker host, a pod per step on Kubernetes.

The executor is an install choice (AWQ_RELEASE_EXECUTOR=celery, docker or k8s, each with the extra
of its name), never a code change. The GPU steps (quantization, model evaluation) go to the `gpu`
Celery queue and carry `dagster-k8s/config` op tags built from the release policy's `target_gpu`; the
other steps go to the `cpu` queue. Each executor reads its own tags and ignores the others'. The
policy is read when the code location loads: after editing `target_gpu`, reload it.
"""

import dataclasses
import json

import dagster as dg

from awq_release.errors import ValidationError
from deploy.cluster import Staging
from deploy.staging import GPUNodes, resources
from orchestrator.environment import EXECUTORS, executor_name
from orchestrator.release.policy import ReleasePolicy, TargetGPU

GPU_POOL = "gpu"  # the accelerator's steps: one at a time locally, one per GPU node on Kubernetes (its limit)
K8S_CONFIG_TAG = "dagster-k8s/config"
CELERY_QUEUE_TAG = "dagster-celery/queue"  # a step untagged so goes to the `cpu` queue
# The cluster autoscaler moves pods off nodes it scales down; a GPU step evicted mid-run loses its work.
NO_EVICTION = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}


def gpu_nodes(gpu: TargetGPU) -> GPUNodes:
    """The policy's GPU nodes as the staging server's manifests take them."""
    tolerations = tuple(
        {"key": t.key, "operator": t.operator, **({"value": t.value} if t.value else {})}
        | ({"effect": t.effect} if t.effect else {})
        for t in gpu.tolerations
    )
    return GPUNodes(gpu.resource, dict(gpu.node_selector), tolerations, gpu.cpu, gpu.memory)


def gpu_step_config(gpu: TargetGPU, gpus: int = 1) -> dict:
    """A step pod's `dagster-k8s/config` (dagster-k8s's snake_case Kubernetes fields): `gpus` of the
    target GPU, the host CPU and memory the policy asks for, on the GPU nodes, never evicted."""
    nodes = gpu_nodes(gpu)
    return {
        "container_config": {"resources": resources(nodes, gpus)},
        "pod_spec_config": {"node_selector": nodes.node_selector, "tolerations": list(nodes.tolerations)},
        "pod_template_spec_metadata": {"annotations": NO_EVICTION},
    }


def gpu_op_tags(gpu: TargetGPU, gpus: int = 1) -> dict[str, str]:
    return {K8S_CONFIG_TAG: json.dumps(gpu_step_config(gpu, gpus)), CELERY_QUEUE_TAG: GPU_POOL}


def staging_of(policy: ReleasePolicy) -> Staging | None:
    """The policy's load.staging, on its target GPU nodes."""
    staging = policy.validation.load.staging
    return staging and dataclasses.replace(staging, nodes=gpu_nodes(policy.target_gpu))


def drives_remote_servers(policy: ReleasePolicy) -> bool:
    """Whether the load stage drives servers that run elsewhere (load.staging or load.endpoint)."""
    return bool(policy.validation.load.staging or policy.validation.load.endpoint)


def load_pool(policy: ReleasePolicy) -> str | None:
    """The load stage holds a gpu slot only where it starts its own server on this machine's GPU."""
    return None if drives_remote_servers(policy) else GPU_POOL


def load_op_tags(policy: ReleasePolicy) -> dict[str, str]:
    """The load stage starts vLLM in its own pod, on the policy's serving.tensor_parallel_size GPUs,
    unless the servers run elsewhere: as staging Deployments (load.staging) or already started
    (load.endpoint). Those hold the GPUs instead, and the stage's pod needs none."""
    if drives_remote_servers(policy):
        return {CELERY_QUEUE_TAG: "cpu"}
    return gpu_op_tags(policy.target_gpu, policy.serving.tensor_parallel_size)


def require_executor_reachable() -> None:
    """One clear error before a run, where the chosen executor's service does not answer: the Celery
    broker, or the Docker engine and its image."""
    choice = executor_name()
    if choice == "celery":
        from orchestrator.distributed.worker import require_broker

        require_broker()
    elif choice == "docker":
        from orchestrator.distributed.containers import require_engine

        require_engine()


def executor() -> dg.ExecutorDefinition:
    """In process by default: the steps share one import of torch and the model stacks."""
    choice = executor_name()
    if choice not in EXECUTORS:
        raise ValidationError(f"AWQ_RELEASE_EXECUTOR={choice!r}: choose one of {', '.join(EXECUTORS)}.")
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "celery":
        try:
            from orchestrator.distributed.executor import celery_executor
        except ImportError as e:
            raise ValidationError(
                "AWQ_RELEASE_EXECUTOR=celery needs dagster-celery: install the project with its `celery` extra."
            ) from e
        return celery_executor
    if choice == "docker":
        try:
            from orchestrator.distributed.containers import container_executor
        except ImportError as e:
            raise ValidationError(
                "AWQ_RELEASE_EXECUTOR=docker needs dagster-docker: install the project with its `docker` extra."
            ) from e
        return container_executor()
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as e:
        raise ValidationError(
            "AWQ_RELEASE_EXECUTOR=k8s needs dagster-k8s: install the project with its `k8s` extra."
        ) from e
    return k8s_job_executor
