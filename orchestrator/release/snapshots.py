"""The policy each run uses: snapshotted by its first step into the lineage database, so that every
later step of the run reads the same text, whatever the file says by then."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from awq_release.errors import ValidationError
from orchestrator.lineage.queries import record_run_policy, run_policy_row
from orchestrator.release.policy import ReleasePolicy, parse_policy


@dataclass(frozen=True)
class PolicySnapshot:
    """The policy one run uses from its first step to its last: a policy edit mid-run waits for the next run."""

    id: int  # run_policies row
    hash: str  # sha256 of the text
    text: str  # the file as the run's first step read it
    policy: ReleasePolicy


def run_policy(engine: Engine, run_id: str, path: str | Path) -> PolicySnapshot:
    """The run's snapshot: read from `path` and recorded by the run's first step; every later step
    gets the recorded text, whatever the file says by then."""
    row = run_policy_row(engine, run_id)
    if row is None:
        path = Path(path)
        if not path.is_file():
            raise ValidationError(f"Release policy {path} does not exist: write one (see the README's release policy).")
        text = path.read_text()
        row = record_run_policy(engine, run_id, text, hashlib.sha256(text.encode()).hexdigest())
    snapshot_id, digest, text = row
    return PolicySnapshot(snapshot_id, digest, text, parse_policy(text, f"release policy of run {run_id}"))
