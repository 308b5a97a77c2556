"""Dagster resources: the lineage database, the platform's folders and policy, and the engines the
quality stages score models with."""

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy import Engine

from orchestrator import environment
from orchestrator.lineage import upgrade

if TYPE_CHECKING:  # the model stack loads when a stage first scores, not with the definitions
    from awq_core.compute import Resolved
    from validation.scoring import Engines
    from validation.settings import ValidationSettings


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


class ScoringEngines(dg.ConfigurableResource):
    """The quality stages' engines (validation.scoring), kept from the first stage that scores a model
    to the end of the steps this resource serves: the whole run under the in-process executor, so a
    vLLM server of each model starts once per release; one step elsewhere. Every server it started is
    stopped when those steps end, however they end."""

    _open: list = PrivateAttr(default_factory=list)

    def engines(self, settings: "ValidationSettings", compute: "Resolved") -> "Engines":
        from validation.stages import scoring_engines

        wanted = scoring_engines(settings, compute)
        kept = next((engines for engines in self._open if engines == wanted), None)
        if kept is None:
            self._open.append(kept := wanted)
        return kept

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        while self._open:
            self._open.pop().close()


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
        "scoring": ScoringEngines(),
        # Hidden, so it never maps to a checkpoint's work folder (partition keys never start with a dot).
        "io_manager": dg.FilesystemIOManager(base_dir=str(environment.work_dir() / ".records")),
    }
