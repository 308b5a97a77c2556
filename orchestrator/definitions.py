"""The platform's one Definitions: `dagster dev -w workspace.yaml` loads it.

Folders and the database come from the environment, with a local default under $AWQ_RELEASE_HOME
(./.platform): checkpoints/ (watched), registry/, work/, policy.yaml, lineage.db. The records the
assets hand each other are kept in work/.records by Dagster's filesystem IO manager.
"""

import os
from pathlib import Path

import dagster as dg

from orchestrator.assets import RELEASE_ASSETS
from orchestrator.jobs import release_job
from orchestrator.placement import platform_home, policy_path
from orchestrator.resources import LineageDatabase, Platform
from orchestrator.sensors import attempt_failure_sensor, checkpoint_sensor


def default_resources() -> dict:
    home = platform_home()
    work_dir = os.environ.get("AWQ_RELEASE_WORK", str(home / "work"))
    database_url = os.environ.get("AWQ_RELEASE_DATABASE_URL", f"sqlite:///{home / 'lineage.db'}")
    return {
        "platform": Platform(
            checkpoints_dir=os.environ.get("AWQ_RELEASE_CHECKPOINTS", str(home / "checkpoints")),
            registry_dir=os.environ.get("AWQ_RELEASE_REGISTRY", str(home / "registry")),
            work_dir=work_dir,
            policy_path=str(policy_path()),
        ),
        "lineage": LineageDatabase(url=database_url),
        # Hidden, so it never maps to a checkpoint's work folder (partition keys never start with a dot).
        "io_manager": dg.FilesystemIOManager(base_dir=str(Path(work_dir) / ".records")),
    }


defs = dg.Definitions(
    assets=RELEASE_ASSETS,
    jobs=[release_job],
    sensors=[checkpoint_sensor, attempt_failure_sensor],
    resources=default_resources(),
)
