"""Release history from the lineage database: the Python API behind history / show / diff / rollback."""

from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from awq_core.errors import ReleaseError
from deploy.registry import current_version, point_current
from orchestrator.db import session_scope
from orchestrator.db.models import QuantizationRun, Release, ReleaseEvent, ValidationStage


def latest_stages(session: Session, quantization_run_id: int) -> dict[str, ValidationStage]:
    """The newest result of each validation stage for one quantization run."""
    rows = session.scalars(
        select(ValidationStage)
        .where(ValidationStage.quantization_run_id == quantization_run_id)
        .order_by(ValidationStage.id)
    ).all()
    return {row.stage: row for row in rows}  # later rows overwrite earlier ones


def gate_metrics(session: Session, release: Release) -> dict[str, dict]:
    if release.quantization_run_id is None:
        return {}
    return {
        f"{stage}.{m.metric}": {
            "baseline": m.baseline,
            "candidate": m.candidate,
            "value": m.value,
            "threshold": m.threshold,
            "passed": m.passed,
        }
        for stage, row in latest_stages(session, release.quantization_run_id).items()
        for m in row.metrics
    }


def stage_outcomes(session: Session, release: Release) -> dict[str, dict]:
    """Each stage's status (passed | failed | skipped) and reasons, for the release's quantization run."""
    if release.quantization_run_id is None:
        return {}
    return {
        stage: {"status": row.status, "reasons": row.reasons}
        for stage, row in latest_stages(session, release.quantization_run_id).items()
    }


def release_record(session: Session, release: Release) -> dict:
    return {
        "model": release.model,
        "version": release.version,
        "status": release.status,
        "created_at": release.created_at.isoformat(),
        "reason": release.reason,
        "path": release.path,
        "checkpoint_id": release.checkpoint_id,
        "quantization_run_id": release.quantization_run_id,
        "gates": gate_metrics(session, release),
        "stages": stage_outcomes(session, release),
    }


def history(engine: Engine, model: str | None = None) -> list[dict]:
    with session_scope(engine) as session:
        query = select(Release).order_by(Release.created_at, Release.id)
        if model:
            query = query.where(Release.model == model)
        return [release_record(session, r) for r in session.scalars(query)]


def _find(session: Session, version: str, model: str | None = None) -> Release:
    query = select(Release).where(Release.version == version)
    if model:
        query = query.where(Release.model == model)
    rows = session.scalars(query).all()
    if len(rows) != 1:
        raise ReleaseError(
            f"{'No' if not rows else 'More than one'} release has version {version!r}"
            + ("" if model else ": name the model too (--model).")
        )
    return rows[0]


def show(engine: Engine, version: str, model: str | None = None) -> dict:
    with session_scope(engine) as session:
        release = _find(session, version, model)
        run = session.get(QuantizationRun, release.quantization_run_id) if release.quantization_run_id else None
        events = session.scalars(
            select(ReleaseEvent).where(ReleaseEvent.release_id == release.id).order_by(ReleaseEvent.id)
        ).all()
        return release_record(session, release) | {
            "manifest": release.manifest,
            "settings": run.settings if run else None,
            "events": [{"action": e.action, "detail": e.detail, "at": e.at.isoformat()} for e in events],
        }


def diff(engine: Engine, a: str, b: str, model: str | None = None) -> dict[str, tuple]:
    """Settings and gate metrics side by side: key -> (value in a, value in b), only where they differ."""
    left, right = show(engine, a, model), show(engine, b, model)

    def flat(record: dict) -> dict:
        settings = {f"settings.{k}": v for k, v in (record["settings"] or {}).items()}
        return (
            settings | {f"gate.{k}": v["candidate"] for k, v in record["gates"].items()} | {"status": record["status"]}
        )

    fa, fb = flat(left), flat(right)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)}


def rollback(engine: Engine, registry: Path, model: str) -> dict:
    """Make the previous promoted release current again, in the registry and the database together:
    the pointer moves inside the transaction and moves back if the commit fails."""
    swapped_from = None
    try:
        with session_scope(engine) as session:
            promoted = session.scalars(
                select(Release).where(Release.model == model, Release.status == "promoted").order_by(Release.id)
            ).all()
            if len(promoted) < 2:
                raise ReleaseError(
                    f"{model} has {len(promoted)} promoted release(s): there is nothing earlier to roll back to."
                )
            current, previous = promoted[-1], promoted[-2]
            on_disk = current_version(registry, model)
            if on_disk != current.version:
                raise ReleaseError(
                    f"The registry's current release of {model} is {on_disk}, the database's is {current.version}: fix the registry before rolling back."
                )
            current.status = "rolled_back"
            session.add(
                ReleaseEvent(release_id=current.id, action="rolled_back", detail=f"replaced by {previous.version}")
            )
            session.add(
                ReleaseEvent(release_id=previous.id, action="restored", detail=f"after rollback of {current.version}")
            )
            session.flush()
            point_current(registry, model, previous.version)
            swapped_from = current.version
            result = {"model": model, "rolled_back": current.version, "current": previous.version}
    except Exception:
        if swapped_from:
            point_current(registry, model, swapped_from)
        raise
    return result
