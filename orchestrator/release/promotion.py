"""The release step's two decisions and one act: which gates block a candidate, whether it was
released already, and promotion into the registry with its database row, all or nothing."""

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from deploy.engine import Serving, serving_target
from deploy.registry import (
    current_version,
    point_current,
    release_folder,
    release_launch,
    versions_on_disk,
    withdraw,
    write_release,
)
from orchestrator.lineage import queries as lineage
from orchestrator.lineage import session_scope
from orchestrator.release.card import model_card
from orchestrator.release.manifest import build_manifest
from orchestrator.release.records import CandidateRecord, StageRecord
from orchestrator.release.snapshots import PolicySnapshot
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


def reconcile(engine: Engine, registry: Path, model: str) -> list[str]:
    """Make the registry agree with the database after a promotion that was killed midway: a release
    folder without a record is withdrawn, and `current` points at the newest promoted release.
    Returns what it did, for the log."""
    with session_scope(engine) as session:
        kept = [r for r in lineage.releases(session) if r.status in ("promoted", "rolled_back")]
        promoted = [r.version for r in lineage.promoted_releases(session, model)]
    recorded = {r.version for r in kept if r.model == model}
    # Any model's recorded release stays, even one whose folder this model's name would also reach.
    recorded_folders = {Path(r.path).resolve() for r in kept if r.path}
    done = []
    on_disk = set(versions_on_disk(registry, model)) - recorded
    for version in sorted(v for v in on_disk if release_folder(registry, model, v).resolve() not in recorded_folders):
        withdraw(registry, model, version)
        done.append(f"withdrew {model} {version}: written by a promotion that was never recorded")
    if promoted and current_version(registry, model) != promoted[-1]:
        point_current(registry, model, promoted[-1])
        done.append(f"made {model} {promoted[-1]} current: its promotion was recorded, then interrupted")
    return done


def promote(
    engine: Engine,
    registry: Path,
    model: str,
    quantization_run_id: int,
    policy: PolicySnapshot,
    serving: Serving,
    attempt: str,
    figures: dict[str, Path] | None = None,
) -> Promotion:
    """Publish the run's output as the model's next version, served with `serving` (the policy's,
    on the GPUs the footprint check chose) on the hardware its load stage ran on, and record it
    under `policy` and `attempt` (the Dagster run).
    `figures`: PNG plots by name (quantization, long_context, load), copied into the release for its card.

    Order, so that a process killed at any point leaves the previous release current and intact and
    reconcile() can finish or undo the rest: the folder is written whole (hidden until renamed), the
    release row commits, and only then does `current` move. If the commit fails, the folder goes."""
    previous = current_version(registry, model)
    written, version = None, None
    try:
        with session_scope(engine) as session:
            chain = lineage.lineage_of(session, quantization_run_id)
            row = lineage.record_release(session, model, "promoted", chain.checkpoint.id, quantization_run_id, {})
            version = row.version
            output = Path(chain.run.output_path)
            load = chain.stages.get("load")
            target = serving_target(serving, (load.compute or {}).get("target") if load else None)
            launch = release_launch(registry, model, version, output, serving, target)
            manifest = build_manifest(model, version, row.id, chain, policy, launch, attempt)
            card = model_card(manifest, tuple(sorted(figures or {})))
            written = write_release(registry, model, version, output, manifest, card, launch, figures)
            row.manifest, row.path = manifest, str(written)
    except Exception:
        if written is not None:
            withdraw(registry, model, version)
        raise
    point_current(registry, model, version)
    return Promotion(version, written, previous, card)
