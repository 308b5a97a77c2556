"""Every setting the platform takes from the environment, in one place, read when asked.

AWQ_RELEASE_HOME (./.platform) holds the defaults of the others: checkpoints/ (watched),
registry/, work/, policy.yaml and lineage.db. A cluster sets each one where its volumes and
database are; AWQ_RELEASE_EXECUTOR=celery (steps as Celery tasks on the Redis broker at
AWQ_RELEASE_BROKER_URL), docker (a container of AWQ_RELEASE_IMAGE per step) or k8s (a pod per
step) for steps beyond this process.
"""

import os
from pathlib import Path

EXECUTORS = ("in_process", "celery", "docker", "k8s")
# Set in each docker executor step container, never by hand: the machine the container runs on.
STEP_CONTAINER_HOST = "AWQ_RELEASE_HOST"


def platform_home() -> Path:
    """Where the platform's folders, policy and local database live ($AWQ_RELEASE_HOME)."""
    return Path(os.environ.get("AWQ_RELEASE_HOME", ".platform")).resolve()


def policy_path() -> Path:
    """The release policy file ($AWQ_RELEASE_POLICY)."""
    return Path(os.environ.get("AWQ_RELEASE_POLICY", str(platform_home() / "policy.yaml")))


def checkpoints_dir() -> Path:
    return Path(os.environ.get("AWQ_RELEASE_CHECKPOINTS", str(platform_home() / "checkpoints")))


def registry_dir() -> Path:
    return Path(os.environ.get("AWQ_RELEASE_REGISTRY", str(platform_home() / "registry")))


def work_dir() -> Path:
    return Path(os.environ.get("AWQ_RELEASE_WORK", str(platform_home() / "work")))


def database_url() -> str:
    """The lineage database: SQLite in the platform's home unless $AWQ_RELEASE_DATABASE_URL names one."""
    return os.environ.get("AWQ_RELEASE_DATABASE_URL", f"sqlite:///{platform_home() / 'lineage.db'}")


def executor_name() -> str:
    """in_process (default), celery, docker or k8s ($AWQ_RELEASE_EXECUTOR); placement checks the choice."""
    return os.environ.get("AWQ_RELEASE_EXECUTOR", "in_process")


def sensor_interval_s() -> int:
    """Seconds between checkpoint-sensor ticks ($AWQ_RELEASE_SENSOR_INTERVAL_S)."""
    return int(os.environ.get("AWQ_RELEASE_SENSOR_INTERVAL_S", "30"))


def broker_url() -> str:
    """The Celery executor's Redis: its steps' queue, their results and their claims ($AWQ_RELEASE_BROKER_URL)."""
    return os.environ.get("AWQ_RELEASE_BROKER_URL", "redis://127.0.0.1:6379/0")


def heartbeat_s() -> float:
    """Seconds between a Celery step's heartbeats; a step silent for three of them lost its worker
    ($AWQ_RELEASE_HEARTBEAT_S)."""
    return float(os.environ.get("AWQ_RELEASE_HEARTBEAT_S", "10"))


def docker_image() -> str:
    """The image each step container of the docker executor runs ($AWQ_RELEASE_IMAGE)."""
    return os.environ.get("AWQ_RELEASE_IMAGE", "awq-release:cpu")


def docker_volumes() -> list[Path]:
    """Host folders mounted read-only into every step container besides the platform's own: where
    the policy's texts and tasks live ($AWQ_RELEASE_DOCKER_VOLUMES, separated by ':')."""
    return [Path(p) for p in os.environ.get("AWQ_RELEASE_DOCKER_VOLUMES", "").split(os.pathsep) if p]


def docker_gpus() -> str:
    """Whether each docker executor step container gets the host's GPUs: "all", or "none" (the
    default) ($AWQ_RELEASE_DOCKER_GPUS)."""
    return os.environ.get("AWQ_RELEASE_DOCKER_GPUS", "none")
