"""Dagster resources: the lineage database and the platform's folders and policy."""

from functools import cache
from pathlib import Path

import dagster as dg
from sqlalchemy import Engine

from orchestrator import environment
from orchestrator.lineage import upgrade


class LineageDatabase(dg.ConfigurableResource):
    """SQLite by default; a postgresql+psycopg:// URL in production. Migrated to head on first use."""

    url: str

    def engine(self) -> Engine:
        return _migrated_engine(self.url)


@cache
def _migrated_engine(url: str) -> Engine:
    return upgrade(url)


class Platform(dg.ConfigurableResource):
    checkpoints_dir: str  # watched: one sub-folder per checkpoint (full HF folder or LoRA adapter)
    registry_dir: str  # promoted releases
    work_dir: str  # calibration sets, quantized candidates, validation reports
    policy_path: str  # the release policy YAML; each run snapshots it (orchestrator.release.policy.run_policy)

    def work(self, partition_key: str) -> Path:
        path = Path(self.work_dir) / partition_key
        path.mkdir(parents=True, exist_ok=True)
        return path


def default_resources() -> dict:
    """The resources as orchestrator.environment says: folders, policy and database."""
    return {
        "platform": Platform(
            checkpoints_dir=str(environment.checkpoints_dir()),
            registry_dir=str(environment.registry_dir()),
            work_dir=str(environment.work_dir()),
            policy_path=str(environment.policy_path()),
        ),
        "lineage": LineageDatabase(url=environment.database_url()),
        # Hidden, so it never maps to a checkpoint's work folder (partition keys never start with a dot).
        "io_manager": dg.FilesystemIOManager(base_dir=str(environment.work_dir() / ".records")),
    }
