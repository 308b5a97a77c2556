"""Lineage writes and look-ups: each asset records its row, the next one finds it by partition key."""

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from awq_core.errors import ReleaseError
from orchestrator.db import session_scope
from orchestrator.db.models import Checkpoint, QuantizationRun, Release, ReleaseEvent, ValidationMetric, ValidationStage
from validation.result import StageResult


class MissingUpstream(ReleaseError):
    """An asset ran before the one it depends on had recorded anything for this checkpoint."""


def latest(session: Session, model, **where):
    row = session.scalars(select(model).filter_by(**where).order_by(model.id.desc()).limit(1)).first()
    if row is None:
        raise MissingUpstream(
            f"No {model.__tablename__} row for {where}: materialize the upstream asset for this checkpoint first."
        )
    return row


def latest_checkpoint(session: Session, key: str) -> Checkpoint:
    return latest(session, Checkpoint, name=key)


def latest_quantization(session: Session, key: str) -> QuantizationRun:
    return latest(session, QuantizationRun, checkpoint_id=latest_checkpoint(session, key).id)


def record_stage(engine: Engine, quantization_run_id: int, result: StageResult, report_path: str) -> int:
    with session_scope(engine) as session:
        row = ValidationStage(
            quantization_run_id=quantization_run_id,
            stage=result.stage,
            passed=result.passed,
            status=result.status,
            reasons=result.reasons,
            warnings=result.warnings,
            report_path=report_path,
            seconds=result.seconds,
            compute=result.compute,
        )
        row.metrics = [
            ValidationMetric(
                metric=m.name,
                baseline=m.baseline,
                candidate=m.candidate,
                value=m.value,
                threshold=m.threshold,
                passed=m.passed,
            )
            for m in result.metrics
        ]
        session.add(row)
        session.flush()
        return row.id


def next_version(session: Session, model: str) -> str:
    count = session.scalar(select(func.count()).select_from(Release).where(Release.model == model))
    return f"v{count + 1:04d}"


def record_release(
    session: Session,
    model: str,
    status: str,
    checkpoint_id: int,
    quantization_run_id: int | None,
    manifest: dict,
    path: str | None = None,
    reason: str | None = None,
    version: str | None = None,
) -> Release:
    """One release row and its first event, in the caller's transaction."""
    release = Release(
        model=model,
        version=version or next_version(session, model),
        status=status,
        checkpoint_id=checkpoint_id,
        quantization_run_id=quantization_run_id,
        path=path,
        reason=reason,
        manifest=manifest,
    )
    session.add(release)
    session.flush()
    session.add(ReleaseEvent(release_id=release.id, action=status, detail=reason))
    return release


def record_rejection(engine: Engine, model: str, key: str, reason: str) -> str:
    """A gate failed: the checkpoint's quantization run becomes one rejected release; each further
    failed gate adds its reason and an event to it."""
    with session_scope(engine) as session:
        run = latest_quantization(session, key)
        rejected = session.scalars(
            select(Release).where(Release.quantization_run_id == run.id, Release.status == "rejected")
        ).first()
        if rejected is None:
            return record_release(
                session, model, "rejected", run.checkpoint_id, run.id, {"checkpoint": key}, reason=reason
            ).version
        rejected.reason = f"{rejected.reason}; {reason}"
        session.add(ReleaseEvent(release_id=rejected.id, action="rejected", detail=reason))
        return rejected.version
