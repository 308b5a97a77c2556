"""Every read and write of the lineage database, by row id: the one module that holds SQL.

Writers open their own transaction and return ids; readers take the caller's session and return
rows, so one transaction can read a release's whole lineage and record its promotion together.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from awq_release.errors import ReleaseError
from orchestrator.lineage import session_scope
from orchestrator.lineage.models import (
    Base,
    CalibrationSet,
    Checkpoint,
    Measurement,
    PowerCheckOutcome,
    QuantizationRun,
    Release,
    ReleaseAttempt,
    ReleaseEvent,
    RunPolicy,
    StepPlacement,
    ValidationMetric,
    ValidationStage,
    utcnow,
)
from orchestrator.lineage.rows import power_report
from validation.result import Metric, PowerReport, StageResult

if TYPE_CHECKING:  # the history commands read the database without importing torch
    from awq_core.quantizer import QuantReport
    from orchestrator.release.ingest import Ingested


@dataclass(frozen=True)
class Lineage:
    """The rows a release of one quantization run descends from, in one session."""

    checkpoint: Checkpoint
    calibration: CalibrationSet
    run: QuantizationRun
    policy: RunPolicy | None  # the quantization run's policy (None for runs before migration 0003)
    stages: dict[str, ValidationStage]  # the newest result of each stage
    power_check: list[PowerCheckOutcome]  # the newest power check's damages; [] where none ran
    power_check_measured_on: str | None  # where the power check was reused: the candidate it was measured on


# Writes, one transaction each.


def _insert(session: Session, row: Base) -> int:
    """Add the row and send it, so its id is known inside the transaction."""
    session.add(row)
    session.flush()
    return row.id


def run_policy_row(engine: Engine, run_id: str) -> tuple[int, str, str] | None:
    """(id, hash, text) of the policy the run recorded, if one of its steps has."""
    with session_scope(engine) as session:
        row = session.scalars(select(RunPolicy).where(RunPolicy.run_id == run_id)).first()
        return None if row is None else (row.id, row.hash, row.text)


def record_run_policy(engine: Engine, run_id: str, text: str, digest: str) -> tuple[int, str, str]:
    """Record the run's policy; if another step of the run recorded one first, theirs stands."""
    try:
        with session_scope(engine) as session:
            return _insert(session, RunPolicy(run_id=run_id, hash=digest, text=text)), digest, text
    except IntegrityError:
        return run_policy_row(engine, run_id)


def start_attempt(engine: Engine, run_id: str, checkpoint: str, source: str) -> None:
    """The run is an attempt at releasing `source` (a folder's stat signature); recorded once per run."""
    with session_scope(engine) as session:
        if session.scalars(select(ReleaseAttempt.id).where(ReleaseAttempt.run_id == run_id)).first() is None:
            _insert(session, ReleaseAttempt(run_id=run_id, checkpoint=checkpoint, source=source, status="running"))


def end_attempt(engine: Engine, run_id: str, status: str, reason: str | None = None) -> None:
    """How the run's attempt ended. The first ending stands: a rejection recorded by a gate is not
    overwritten by the run failure the blocked gate causes."""
    with session_scope(engine) as session:
        attempt = session.scalars(select(ReleaseAttempt).where(ReleaseAttempt.run_id == run_id)).first()
        if attempt is not None and attempt.status == "running":
            attempt.status, attempt.reason, attempt.ended_at = status, reason, utcnow()


def running_attempts(engine: Engine) -> list[str]:
    """Run ids of attempts recorded as started and never as ended."""
    with session_scope(engine) as session:
        return list(session.scalars(select(ReleaseAttempt.run_id).where(ReleaseAttempt.status == "running")))


def record_placement(engine: Engine, run_id: str, step: str, checkpoint: str | None, **where) -> int:
    """Where a step ran (orchestrator.distributed.worker.placement) and how it ended."""
    with session_scope(engine) as session:
        return _insert(session, StepPlacement(run_id=run_id, step=step, checkpoint=checkpoint, **where))


def placements(session: Session, run_id: str) -> list[StepPlacement]:
    """The run's steps in the order they ended."""
    query = select(StepPlacement).where(StepPlacement.run_id == run_id).order_by(StepPlacement.id)
    return list(session.scalars(query))


def note_content(engine: Engine, run_id: str, content_hash: str) -> None:
    """The attempt's folder hashed to `content_hash`: a retry of the same folder need not hash it again."""
    with session_scope(engine) as session:
        attempt = session.scalars(select(ReleaseAttempt).where(ReleaseAttempt.run_id == run_id)).first()
        if attempt is not None:
            attempt.content_hash = content_hash


def known_content_hash(engine: Engine, source: str) -> str | None:
    """The content hash an earlier attempt computed for this stat signature, if any."""
    with session_scope(engine) as session:
        query = select(ReleaseAttempt.content_hash).where(
            ReleaseAttempt.source == source, ReleaseAttempt.content_hash.is_not(None)
        )
        return session.scalars(query.order_by(ReleaseAttempt.id.desc())).first()


def released_versions(engine: Engine, content_hash: str) -> list[str]:
    """The versions under which this content was ever promoted (rolled back ones too)."""
    with session_scope(engine) as session:
        query = (
            select(Release.model, Release.version)
            .join(Checkpoint, Release.checkpoint_id == Checkpoint.id)
            .where(Checkpoint.content_hash == content_hash, Release.status.in_(("promoted", "rolled_back")))
        )
        return [f"{model} {version}" for model, version in session.execute(query)]


def attempt_statuses(engine: Engine, source: str) -> list[str]:
    """How each attempt at releasing `source` ended (running while under way), oldest first."""
    with session_scope(engine) as session:
        query = select(ReleaseAttempt.status).where(ReleaseAttempt.source == source).order_by(ReleaseAttempt.id)
        return list(session.scalars(query))


def attempts(session: Session, checkpoint: str | None = None) -> list[ReleaseAttempt]:
    """Every attempt, oldest first; of one checkpoint (partition key) if named."""
    query = select(ReleaseAttempt).order_by(ReleaseAttempt.id)
    return list(session.scalars(query.where(ReleaseAttempt.checkpoint == checkpoint) if checkpoint else query))


def register_checkpoint(engine: Engine, name: str, found: "Ingested") -> int:
    """The checkpoint row for this content: the existing one if the same bytes were registered before."""
    with session_scope(engine) as session:
        existing = session.scalars(select(Checkpoint.id).where(Checkpoint.content_hash == found.content_hash)).first()
        if existing is not None:
            return existing
        row = Checkpoint(
            name=name,
            path=str(found.model_dir),
            content_hash=found.content_hash,
            base_model=found.base_model,
            adapter_path=found.adapter_path,
            architecture=found.architecture,
            size_bytes=found.size_bytes,
        )
        return _insert(session, row)


def record_calibration(
    engine: Engine,
    checkpoint_id: int,
    sources: dict[str, str],
    n_samples: int,
    seqlen: int,
    tokens_path: Path,
    tokens_hash: str,
) -> int:
    row = CalibrationSet(
        checkpoint_id=checkpoint_id,
        source_hashes=sources,
        n_samples=n_samples,
        seqlen=seqlen,
        tokens_path=str(tokens_path),
        tokens_hash=tokens_hash,
    )
    with session_scope(engine) as session:
        return _insert(session, row)


def record_quantization(
    engine: Engine,
    checkpoint_id: int,
    calibration_set_id: int,
    policy_id: int,
    report: "QuantReport",
    output_hash: str,
    address: str,
) -> int:
    row = QuantizationRun(
        checkpoint_id=checkpoint_id,
        calibration_set_id=calibration_set_id,
        policy_id=policy_id,
        settings=report.config | {"compute": report.compute},
        seconds=report.seconds,
        peak_rss_mb=report.peak_rss_mb,
        layer_errors=report.layers,
        block_mse=report.block_mse,
        output_path=report.out_dir,
        output_hash=output_hash,
        address=address,
    )
    with session_scope(engine) as session:
        return _insert(session, row)


def finished_quantization(engine: Engine, address: str) -> tuple[int, str, str] | None:
    """The newest run that quantized a model at this address: (its id, output path, output hash)."""
    with session_scope(engine) as session:
        query = select(QuantizationRun.id, QuantizationRun.output_path, QuantizationRun.output_hash).where(
            QuantizationRun.address == address, QuantizationRun.reused_from_id.is_(None)
        )
        found = session.execute(query.order_by(QuantizationRun.id.desc())).first()
        return tuple(found) if found else None


def record_reuse(
    engine: Engine, made_by: int, checkpoint_id: int, calibration_set_id: int, policy_id: int
) -> tuple[int, str]:
    """A run that took the finished model run `made_by` quantized, unchanged: its figures, no time of
    its own. Returns the new run's id and the model's output hash."""
    with session_scope(engine) as session:
        made = session.get(QuantizationRun, made_by)
        row = QuantizationRun(
            checkpoint_id=checkpoint_id,
            calibration_set_id=calibration_set_id,
            policy_id=policy_id,
            settings=made.settings,
            seconds=0.0,
            peak_rss_mb=0.0,
            layer_errors=made.layer_errors,
            block_mse=made.block_mse,
            output_path=made.output_path,
            output_hash=made.output_hash,
            address=made.address,
            reused_from_id=made.id,
        )
        return _insert(session, row), made.output_hash


def _metric_row(metric: Metric) -> ValidationMetric:
    return ValidationMetric(
        metric=metric.name,
        baseline=metric.baseline,
        candidate=metric.candidate,
        value=metric.value,
        low=metric.interval[0] if metric.interval else None,
        high=metric.interval[1] if metric.interval else None,
        threshold=metric.threshold,
        higher_is_better=metric.higher_is_better,
        verdict=metric.verdict,
        passed=metric.passed,
    )


def record_stage(engine: Engine, quantization_run_id: int, result: StageResult, report_path: str) -> int:
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
        reused=result.reused,
        metrics=[_metric_row(m) for m in result.metrics],
    )
    with session_scope(engine) as session:
        return _insert(session, row)


def _outcome_rows(
    quantization_run_id: int,
    run_id: str,
    report: "PowerReport",
    address: str | None,
    reused_from: list[int] | None = None,
) -> list[PowerCheckOutcome]:
    """A power check's outcomes as rows; `reused_from`: the outcome each one copies, where it was reused."""
    originals = reused_from or [None] * len(report.outcomes)
    return [
        PowerCheckOutcome(
            quantization_run_id=quantization_run_id,
            run_id=run_id,
            damage=o.damage,
            description=o.description,
            meant_for=o.meant_for,
            verdicts=o.verdicts,
            reasons=o.reasons,
            seconds=o.seconds,
            address=address,
            reused_from_id=original,
        )
        for o, original in zip(report.outcomes, originals, strict=True)
    ]


def _insert_all(session: Session, rows: list[Base]) -> list[int]:
    session.add_all(rows)
    session.flush()
    return [row.id for row in rows]


def record_power_check(
    engine: Engine, quantization_run_id: int, run_id: str, report: "PowerReport", address: str | None = None
) -> list[int]:
    """Every planted damage's outcome, in one transaction."""
    with session_scope(engine) as session:
        return _insert_all(session, _outcome_rows(quantization_run_id, run_id, report, address))


def measured_power_check(engine: Engine, address: str) -> list[int]:
    """The outcome ids of the newest power check measured (not reused) at this address; [] if none."""
    with session_scope(engine) as session:
        query = select(PowerCheckOutcome).where(
            PowerCheckOutcome.address == address, PowerCheckOutcome.reused_from_id.is_(None)
        )
        rows = session.scalars(query.order_by(PowerCheckOutcome.id)).all()
        return [row.id for row in rows if row.run_id == rows[-1].run_id] if rows else []


def record_power_check_reuse(
    engine: Engine, quantization_run_id: int, run_id: str, measured: list[int]
) -> tuple[list[int], "PowerReport"]:
    """The outcomes `measured` (ids), recorded again for another quantization run, each pointing at
    its original: the new rows' ids, and the report they hold."""
    with session_scope(engine) as session:
        originals = [session.get(PowerCheckOutcome, i) for i in measured]
        report = power_report(originals)
        rows = _outcome_rows(quantization_run_id, run_id, report, originals[0].address, measured)
        return _insert_all(session, rows), report


def kept_figures(engine: Engine, address: str) -> dict | None:
    with session_scope(engine) as session:
        return session.scalars(select(Measurement.figures).where(Measurement.address == address)).first()


def keep_figures(engine: Engine, address: str, stage: str, model_hash: str, figures: dict, run_id: str) -> None:
    """Keep what a stage measured of one model; a step that kept the same address first stands."""
    try:
        with session_scope(engine) as session:
            _insert(
                session,
                Measurement(address=address, stage=stage, model_hash=model_hash, figures=figures, run_id=run_id),
            )
    except IntegrityError:
        pass  # the same figures, measured by a concurrent step


@dataclass(frozen=True)
class StoredFigures:
    """validation.memo.FigureStore on the measurements table, for the steps of one Dagster run."""

    engine: Engine
    run_id: str

    def get(self, address: str) -> dict | None:
        return kept_figures(self.engine, address)

    def put(self, address: str, stage: str, model_hash: str, figures: dict) -> None:
        keep_figures(self.engine, address, stage, model_hash, figures, self.run_id)


def record_rejection(engine: Engine, model: str, quantization_run_id: int, reason: str) -> str:
    """A gate failed: the quantization run becomes one rejected release; each further failed gate
    adds its reason and an event to it. Returns the rejected release's version."""
    with session_scope(engine) as session:
        query = select(Release).where(Release.quantization_run_id == quantization_run_id, Release.status == "rejected")
        rejected = session.scalars(query).first()
        if rejected is None:
            run = session.get(QuantizationRun, quantization_run_id)
            manifest = {"checkpoint": session.get(Checkpoint, run.checkpoint_id).name}
            return record_release(
                session, model, "rejected", run.checkpoint_id, run.id, manifest, reason=reason
            ).version
        rejected.reason = f"{rejected.reason}; {reason}"
        add_event(session, rejected.id, "rejected", reason)
        return rejected.version


# Writes inside the caller's transaction.


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
) -> Release:
    """One release row, numbered next for its model, and its first event."""
    release = Release(
        model=model,
        version=next_version(session, model),
        status=status,
        checkpoint_id=checkpoint_id,
        quantization_run_id=quantization_run_id,
        path=path,
        reason=reason,
        manifest=manifest,
    )
    _insert(session, release)
    add_event(session, release.id, status, reason)
    return release


def add_event(session: Session, release_id: int, action: str, detail: str | None) -> None:
    session.add(ReleaseEvent(release_id=release_id, action=action, detail=detail))


# Reads.


def latest_stages(session: Session, quantization_run_id: int) -> dict[str, ValidationStage]:
    """The newest result of each validation stage for one quantization run."""
    query = select(ValidationStage).where(ValidationStage.quantization_run_id == quantization_run_id)
    rows = session.scalars(query.order_by(ValidationStage.id)).all()
    return {row.stage: row for row in rows}  # later rows overwrite earlier ones


def latest_power_check(session: Session, quantization_run_id: int) -> list[PowerCheckOutcome]:
    """The newest power check of one quantization run (the outcomes of one Dagster run); [] if none ran."""
    query = select(PowerCheckOutcome).where(PowerCheckOutcome.quantization_run_id == quantization_run_id)
    rows = session.scalars(query.order_by(PowerCheckOutcome.id)).all()
    return [row for row in rows if row.run_id == rows[-1].run_id] if rows else []


def measured_on(session: Session, outcomes: list[PowerCheckOutcome]) -> str | None:
    """Where reused outcomes were measured: the release (or quantization run) whose candidate was damaged."""
    if not outcomes or outcomes[0].reused_from_id is None:
        return None
    run_id = session.get(PowerCheckOutcome, outcomes[0].reused_from_id).quantization_run_id
    run = session.get(QuantizationRun, run_id)
    name = session.get(Checkpoint, run.checkpoint_id).name
    query = select(Release.model, Release.version).where(
        Release.quantization_run_id.in_(_reuse_family(session, run)), Release.status.in_(("promoted", "rolled_back"))
    )
    released = [f"{model} {version}" for model, version in session.execute(query.order_by(Release.id))]
    where = f"quantization run {run.id} of checkpoint {name}"
    return f"release {released[0]} ({where})" if released else f"{where}, which was not released"


def _reuse_family(session: Session, run: QuantizationRun) -> list[int]:
    """The run that made this model and every run that reused it: one candidate, under several ids."""
    made = run.reused_from_id or run.id
    query = select(QuantizationRun.id).where((QuantizationRun.id == made) | (QuantizationRun.reused_from_id == made))
    return list(session.scalars(query))


def lineage_of(session: Session, quantization_run_id: int) -> Lineage:
    run = session.get(QuantizationRun, quantization_run_id)
    power_check = latest_power_check(session, run.id)
    return Lineage(
        checkpoint=session.get(Checkpoint, run.checkpoint_id),
        calibration=session.get(CalibrationSet, run.calibration_set_id),
        run=run,
        policy=session.get(RunPolicy, run.policy_id) if run.policy_id else None,
        stages=latest_stages(session, run.id),
        power_check=power_check,
        power_check_measured_on=measured_on(session, power_check),
    )


def promoted_versions(engine: Engine, quantization_run_id: int) -> list[str]:
    """The versions under which this quantization run was promoted (at most one, unless forced)."""
    with session_scope(engine) as session:
        query = select(Release.version).where(
            Release.quantization_run_id == quantization_run_id, Release.status == "promoted"
        )
        return list(session.scalars(query).all())


def releases(session: Session, model: str | None = None) -> list[Release]:
    """Every release, oldest first; of one model if named."""
    query = select(Release).order_by(Release.created_at, Release.id)
    return list(session.scalars(query.where(Release.model == model) if model else query))


def promoted_releases(session: Session, model: str) -> list[Release]:
    """The model's releases that are promoted now, in the order they were promoted."""
    query = select(Release).where(Release.model == model, Release.status == "promoted")
    return list(session.scalars(query.order_by(Release.id)))


def run_settings(session: Session, quantization_run_id: int | None) -> dict | None:
    """The settings a quantization run used (None for a release that has no run)."""
    return session.get(QuantizationRun, quantization_run_id).settings if quantization_run_id else None


def find_release(session: Session, version: str, model: str | None = None) -> Release:
    query = select(Release).where(Release.version == version)
    rows = session.scalars(query.where(Release.model == model) if model else query).all()
    if len(rows) != 1:
        found = "No" if not rows else "More than one"
        raise ReleaseError(
            f"{found} release has version {version!r}" + ("" if model else ": name the model too (--model).")
        )
    return rows[0]


def release_events(session: Session, release_id: int) -> list[ReleaseEvent]:
    query = select(ReleaseEvent).where(ReleaseEvent.release_id == release_id)
    return list(session.scalars(query.order_by(ReleaseEvent.id)))
