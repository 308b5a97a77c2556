"""A container per step on one Docker host: Dagster's docker_executor with the platform's image.

The isolation option for a single large GPU host: each step runs in a fresh container of the image
(scripts/build-image.sh), sees only the folders mounted into it, and leaves no process behind. The
containers share the host's network, so the Dagster instance, the lineage database and any serving
endpoint are reached at the addresses the run itself uses.
"""

import os
import socket
from pathlib import Path

import dagster as dg
import docker
from dagster_docker import docker_executor
from dagster_shared.serdes.utils import hash_str

from awq_release.errors import ValidationError
from orchestrator import environment

STEP_EXIT_S = 60  # how long a finished step's container may take to exit before the run removes it


def shared_folders() -> tuple[list[Path], list[Path]]:
    """(read-write, read-only) host folders every step container mounts at the same path: the
    platform's folders, the Dagster instance, a SQLite database's folder and
    $AWQ_RELEASE_DOCKER_VOLUMES (where the policy's texts and tasks live). Checkpoints are mounted
    read-only: no step writes into a team's checkpoint."""
    writable = [environment.platform_home(), environment.registry_dir(), environment.work_dir()]
    writable.append(environment.policy_path().parent)
    if "DAGSTER_HOME" in os.environ:  # otherwise `awq-release run` keeps it in the home (prepare_home)
        writable.append(Path(os.environ["DAGSTER_HOME"]))
    if (url := environment.database_url()).startswith("sqlite:///"):
        writable.append(Path(url.removeprefix("sqlite:///")).parent)
    readable = [environment.checkpoints_dir()] + environment.docker_volumes()
    return outermost(writable), outermost(readable)


def outermost(folders: list[Path]) -> list[Path]:
    """The folders none of the others contains, each once."""
    resolved = sorted({f.resolve() for f in folders})
    return [f for f in resolved if not any(f != other and f.is_relative_to(other) for other in resolved)]


def volumes() -> dict[str, dict[str, str]]:
    writable, readable = shared_folders()
    mounts = {str(f): {"bind": str(f), "mode": "rw"} for f in writable}
    return mounts | {str(f): {"bind": str(f), "mode": "ro"} for f in readable}


def forwarded_environment() -> list[str]:
    """The platform's settings as this process resolved them (the image's own defaults, and a home
    relative to this process's folder, mean nothing inside), the rest of its AWQ_RELEASE_* settings
    by name, and the host's name for the placement rows."""
    resolved = {
        "AWQ_RELEASE_HOME": environment.platform_home(),
        "AWQ_RELEASE_CHECKPOINTS": environment.checkpoints_dir().resolve(),
        "AWQ_RELEASE_REGISTRY": environment.registry_dir().resolve(),
        "AWQ_RELEASE_WORK": environment.work_dir().resolve(),
        "AWQ_RELEASE_POLICY": environment.policy_path().resolve(),
        "AWQ_RELEASE_DATABASE_URL": environment.database_url(),
        environment.STEP_CONTAINER_HOST: socket.gethostname(),
    }
    named = sorted(k for k in os.environ if k.startswith("AWQ_RELEASE_") or k in ("DAGSTER_HOME", "HF_HUB_OFFLINE"))
    return [f"{k}={v}" for k, v in resolved.items()] + [k for k in named if k not in resolved]


def gpu_requests() -> list[dict]:
    """Every GPU of the host for each step ($AWQ_RELEASE_DOCKER_GPUS=all, with the NVIDIA container
    toolkit); the gpu pool still lets one step compute at a time."""
    if environment.docker_gpus() != "all":
        return []
    return [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]


def container_executor() -> dg.ExecutorDefinition:
    return docker_executor.configured(
        {
            "image": environment.docker_image(),
            "networks": ["host"],
            "env_vars": forwarded_environment(),
            "container_kwargs": {"volumes": volumes(), "device_requests": gpu_requests()},
        },
        name="docker",
    )


def require_engine() -> None:
    """One clear error before a run starts when the Docker engine or the image is missing."""
    image = environment.docker_image()
    try:
        docker.from_env().images.get(image)
    except docker.errors.ImageNotFound as e:
        raise ValidationError(
            f"AWQ_RELEASE_EXECUTOR=docker: no image {image!r}: build it with `bash scripts/build-image.sh`"
            " or set AWQ_RELEASE_IMAGE."
        ) from e
    except docker.errors.DockerException as e:
        raise ValidationError(
            f"AWQ_RELEASE_EXECUTOR=docker: the Docker engine is not reachable ({e}): start dockerd or set DOCKER_HOST."
        ) from e


def remove_step_containers(run_id: str, step_keys: list[str]) -> None:
    """The run's step containers, once each has exited: docker_executor names them by run and step
    (a retry adds -N) and keeps them. A step's process may still be exiting when its run ends."""
    client = docker.from_env()
    names = {f"dagster-step-{hash_str(run_id + key)}" for key in step_keys}
    for container in client.containers.list(all=True, filters={"name": "dagster-step-"}):
        if any(container.name == name or container.name.startswith(f"{name}-") for name in names):
            container.wait(timeout=STEP_EXIT_S)
            container.remove()
