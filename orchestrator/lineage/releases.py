"""Release history from the lineage database: the Python API behind history / show / diff / rollback."""

from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from awq_release.errors import ReleaseError
from deploy.registry import current_version, point_current
from orchestrator.lineage import queries as lineage
from orchestrator.lineage import session_scope
from orchestrator.lineage.models import Release
from orchestrator.lineage.rows import metric_record, power_check_record


def gate_metrics(session: Session, release: Release) -> dict[str, dict]:
    """Every gated figure of the release's quantization run: "stage.metric" -> its figures."""
    if release.quantization_run_id is None:
        return {}
    stages = lineage.latest_stages(session, release.quantization_run_id)
    return {f"{stage}.{m.metric}": metric_record(m) for stage, row in stages.items() for m in row.metrics}


def stage_outcomes(session: Session, release: Release) -> dict[str, dict]:
    """Each stage's status (passed | failed | skipped) and reasons, for the release's quantization run."""
    if release.quantization_run_id is None:
        return {}
    stages = lineage.latest_stages(session, release.quantization_run_id)
    return {stage: {"status": row.status, "reasons": row.reasons} for stage, row in stages.items()}


def release_record(session: Session, release: Release) -> dict:
    run_id = release.quantization_run_id
    power = lineage.latest_power_check(session, run_id) if run_id else []
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
        "power_check": power_check_record(power, lineage.measured_on(session, power)),
    }


def history(engine: Engine, model: str | None = None) -> list[dict]:
    with session_scope(engine) as session:
        return [release_record(session, r) for r in lineage.releases(session, model)]


def attempt_history(engine: Engine, checkpoint: str | None = None) -> list[dict]:
    """Every attempt at a release, oldest first: how it ended and why, the failed and killed ones too."""
    with session_scope(engine) as session:
        return [
            {
                "run_id": a.run_id,
                "checkpoint": a.checkpoint,
                "status": a.status,
                "reason": a.reason,
                "started_at": a.started_at.isoformat(),
                "ended_at": a.ended_at.isoformat() if a.ended_at else None,
            }
            for a in lineage.attempts(session, checkpoint)
        ]


def show(engine: Engine, version: str, model: str | None = None) -> dict:
    with session_scope(engine) as session:
        release = lineage.find_release(session, version, model)
        settings = lineage.run_settings(session, release.quantization_run_id)
        events = lineage.release_events(session, release.id)
        return release_record(session, release) | {
            "manifest": release.manifest,
            "settings": settings,
            "events": [{"action": e.action, "detail": e.detail, "at": e.at.isoformat()} for e in events],
        }


def _flat(record: dict) -> dict:
    """A shown release as one level of keys: settings.*, gate.* (candidate figures) and status."""
    settings = {f"settings.{k}": v for k, v in (record["settings"] or {}).items()}
    gates = {f"gate.{k}": v["candidate"] for k, v in record["gates"].items()}
    return settings | gates | {"status": record["status"]}


def diff(engine: Engine, a: str, b: str, model: str | None = None) -> dict[str, tuple]:
    """Settings and gate metrics side by side: key -> (value in a, value in b), only where they differ."""
    fa, fb = _flat(show(engine, a, model)), _flat(show(engine, b, model))
    return {k: (fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)}


def rollback(engine: Engine, registry: Path, model: str) -> dict:
    """Make the previous promoted release current again, in the registry and the database together:
    the pointer moves inside the transaction and moves back if the commit fails."""
    swapped_from = None
    try:
        with session_scope(engine) as session:
            promoted = lineage.promoted_releases(session, model)
            if len(promoted) < 2:
                raise ReleaseError(
                    f"{model} has {len(promoted)} promoted release(s): there is nothing earlier to roll back to."
                )
            current, previous = promoted[-1], promoted[-2]
            on_disk = current_version(registry, model)
            if on_disk != current.version:
                raise ReleaseError(
                    f"The registry's current release of {model} is {on_disk}, the database's is {current.version}: "
                    "fix the registry before rolling back."
                )
            current.status = "rolled_back"
            lineage.add_event(session, current.id, "rolled_back", f"replaced by {previous.version}")
            lineage.add_event(session, previous.id, "restored", f"after rollback of {current.version}")
            session.flush()
            point_current(registry, model, previous.version)
            swapped_from = current.version
            result = {"model": model, "rolled_back": current.version, "current": previous.version}
    except Exception:
        if swapped_from:
            point_current(registry, model, swapped_from)
        raise
    return result
