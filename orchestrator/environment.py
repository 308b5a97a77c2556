"""Every setting the platform takes from the environment, in one place, read when asked.

AWQ_RELEASE_HOME (./.platform) holds the defaults of the others: checkpoints/ (watched),
registry/, work/, policy.yaml and lineage.db. A cluster sets each one where its volumes and
database are, and AWQ_RELEASE_EXECUTOR=k8s for a pod per step.
"""

import os
from pathlib import Path

EXECUTORS = ("in_process", "k8s")


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
    """in_process (default) or k8s ($AWQ_RELEASE_EXECUTOR); placement checks the choice."""
    return os.environ.get("AWQ_RELEASE_EXECUTOR", "in_process")


def sensor_interval_s() -> int:
    """Seconds between checkpoint-sensor ticks ($AWQ_RELEASE_SENSOR_INTERVAL_S)."""
    return int(os.environ.get("AWQ_RELEASE_SENSOR_INTERVAL_S", "30"))
