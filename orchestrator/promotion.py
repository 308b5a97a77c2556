"""The release step's two decisions and one act: which gates block a candidate, whether it was
released already, and promotion into the registry with its database row, all or nothing."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from deploy.registry import current_version, publish, unpublish
from orchestrator import lineage
from orchestrator.db import session_scope
from orchestrator.manifest import build_manifest
from orchestrator.policy import PolicySnapshot
from orchestrator.records import CandidateRecord, StageRecord
from orchestrator.reports import model_card
from validation import STAGES


@dataclass(frozen=True)
class Promotion:
    version: str
    path: Path
    previous: str | None  # the release that was current before, if any
    model_card: str


def blocking_stages(candidate: CandidateRecord, stages: dict[str, StageRecord]) -> list[str]:
    """Stages that stop the candidate: failed, or never validated against this quantization run.
    A stage the policy let skip blocks nothing."""
    return [
        name
        for name in STAGES
        if (record := stages.get(name)) is None
        or record.quantization_run_id != candidate.id
        or record.status == "failed"
    ]


def promote(engine: Engine, registry: Path, model: str, quantization_run_id: int, policy: PolicySnapshot) -> Promotion:
    """Publish the run's output as the model's next version, served as `policy` says, and record it.
    The release row commits only if the folder was published, and the folder is withdrawn if the
    commit fails."""
    previous = current_version(registry, model)
    published, version = None, None
    try:
        with session_scope(engine) as session:
            chain = lineage.lineage_of(session, quantization_run_id)
            row = lineage.record_release(session, model, "promoted", chain.checkpoint.id, quantization_run_id, {})
            version = row.version
            manifest = build_manifest(model, version, row.id, chain, policy)
            card = model_card(manifest)
            serving = dataclasses.asdict(policy.policy.serving)
            published = publish(registry, model, version, Path(chain.run.output_path), manifest, card, serving)
            row.manifest, row.path = manifest, str(published)
    except Exception:
        if published is not None:
            unpublish(registry, model, version, previous)
        raise
    return Promotion(version, published, previous, card)
