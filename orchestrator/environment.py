"""Every setting the platform takes from the environment, in one place, read when asked.

AWQ_RELEASE_HOME (./.platform) holds the defaults of the others: checkpoints/ (watched),
registry/, work/, policy.yaml and lineage.db. A cluster sets each one where its volumes and
database are; AWQ_RELEASE_EXECUTOR=celery (steps as Celery tasks on the Redis broker at
AWQ_RELEASE_BROKER_URL) or k8s (a pod per step) for steps beyond this process.
"""

import os
from pathlib import Path

EXECUTORS = ("in_process", "celery", "k8s")


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
    """in_process (default), celery or k8s ($AWQ_RELEASE_EXECUTOR); placement checks the choice."""
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
