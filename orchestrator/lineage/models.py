"""Lineage and metrics: every release traces back to its checkpoint, calibration data and settings."""

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints, so Alembic's batch mode can alter them on SQLite too.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)  # the dynamic partition key
    path: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    base_model: Mapped[str | None] = mapped_column(Text)
    adapter_path: Mapped[str | None] = mapped_column(Text)  # set when a LoRA adapter was merged into base_model
    architecture: Mapped[str] = mapped_column(String(128))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CalibrationSet(Base):
    __tablename__ = "calibration_sets"
    id: Mapped[int] = mapped_column(primary_key=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))
    source_hashes: Mapped[dict] = mapped_column(JSON)  # file path -> sha256
    n_samples: Mapped[int] = mapped_column(Integer)
    seqlen: Mapped[int] = mapped_column(Integer)
    tokens_path: Mapped[str] = mapped_column(Text)  # the (N, L) token ids, as safetensors
    tokens_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RunPolicy(Base):
    """The release policy one Dagster run used, snapshotted by its first step: every step reads this."""

    __tablename__ = "run_policies"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), unique=True)  # the Dagster run
    hash: Mapped[str] = mapped_column(String(64), index=True)  # sha256 of the text
    text: Mapped[str] = mapped_column(Text)  # the policy file as it was read
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReleaseAttempt(Base):
    """One run of the release job for one dropped folder: how it ended, and why if it did not release.

    A failed or killed attempt is retried (up to the policy's max_attempts); a released, rejected or
    duplicate one is not."""

    __tablename__ = "release_attempts"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), unique=True)  # the Dagster run
    checkpoint: Mapped[str] = mapped_column(String(255), index=True)  # the partition key
    source: Mapped[str] = mapped_column(String(64), index=True)  # the folder's stat signature
    status: Mapped[str] = mapped_column(String(16))  # running | released | rejected | duplicate | failed | killed
    reason: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(64))  # once ingest has hashed the folder
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StepPlacement(Base):
    """Where one step of a run ran: the host, the worker (a Celery worker's name, or "in-process")
    and the device; when it started and ended, and how (success | failure)."""

    __tablename__ = "step_placements"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)  # the Dagster run
    step: Mapped[str] = mapped_column(String(64))
    checkpoint: Mapped[str | None] = mapped_column(String(255))  # the run's partition
    host: Mapped[str] = mapped_column(String(255))
    worker: Mapped[str] = mapped_column(String(255))
    device: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class QuantizationRun(Base):
    __tablename__ = "quantization_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))
    calibration_set_id: Mapped[int] = mapped_column(ForeignKey("calibration_sets.id"))
    policy_id: Mapped[int | None] = mapped_column(ForeignKey("run_policies.id"))  # None before migration 0003
    settings: Mapped[dict] = mapped_column(JSON)
    seconds: Mapped[float] = mapped_column(Float)
    peak_rss_mb: Mapped[float] = mapped_column(Float)
    layer_errors: Mapped[list] = mapped_column(JSON)  # per linear: alpha, clip ratio, group MSE before/after
    block_mse: Mapped[list] = mapped_column(JSON)
    output_path: Mapped[str] = mapped_column(Text)
    output_hash: Mapped[str] = mapped_column(String(64))  # of the tensors and settings, not the report's timings
    # awq_core.address: what the output was made from; None before migration 0005.
    address: Mapped[str | None] = mapped_column(String(64), index=True)
    # The run that made the output this one reused unchanged; None where this run quantized.
    reused_from_id: Mapped[int | None] = mapped_column(ForeignKey("quantization_runs.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ValidationStage(Base):
    __tablename__ = "validation_stages"
    id: Mapped[int] = mapped_column(primary_key=True)
    quantization_run_id: Mapped[int] = mapped_column(ForeignKey("quantization_runs.id"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    passed: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16), server_default="failed")  # passed | failed | skipped (never passed)
    reasons: Mapped[list] = mapped_column(JSON)  # why it failed, or why it was skipped
    warnings: Mapped[list] = mapped_column(JSON)
    compute: Mapped[dict | None] = mapped_column(JSON)  # device and dtype, or the serving engine
    # The roles (baseline, candidate) whose figures were measured before and found in measurements.
    reused: Mapped[list | None] = mapped_column(JSON)
    report_path: Mapped[str] = mapped_column(Text)  # the stage's full JSON result
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    metrics: Mapped[list["ValidationMetric"]] = relationship(back_populates="stage_row", cascade="all, delete-orphan")


class ValidationMetric(Base):
    __tablename__ = "validation_metrics"
    id: Mapped[int] = mapped_column(primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("validation_stages.id"), index=True)
    metric: Mapped[str] = mapped_column(String(128))
    baseline: Mapped[float | None] = mapped_column(Float)
    candidate: Mapped[float] = mapped_column(Float)
    value: Mapped[float] = mapped_column(Float)  # the point estimate
    low: Mapped[float | None] = mapped_column(Float)  # its confidence interval; None: the point decided
    high: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    # True: the threshold is a floor (value >= threshold passes); False: a ceiling.
    higher_is_better: Mapped[bool] = mapped_column(Boolean, server_default=false())
    verdict: Mapped[str] = mapped_column(String(16))  # pass | fail | inconclusive (what the evidence says)
    passed: Mapped[bool] = mapped_column(Boolean)  # what the gate decided, inconclusive per the policy
    stage_row: Mapped[ValidationStage] = relationship(back_populates="metrics")


class PowerCheckOutcome(Base):
    """One planted damage of a quantization run's power check: which stages caught it."""

    __tablename__ = "power_check_outcomes"
    id: Mapped[int] = mapped_column(primary_key=True)
    quantization_run_id: Mapped[int] = mapped_column(ForeignKey("quantization_runs.id"), index=True)
    run_id: Mapped[str] = mapped_column(String(64))  # the Dagster run that checked
    damage: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text)
    meant_for: Mapped[str | None] = mapped_column(String(32))  # the stage built to catch it, if one is
    verdicts: Mapped[dict] = mapped_column(JSON)  # stage -> caught | inconclusive | missed
    reasons: Mapped[dict] = mapped_column(JSON)  # stage -> why it rejected the damaged copy
    seconds: Mapped[float] = mapped_column(Float)
    # What the outcome depends on (validation.power.power_check_address): a later run at the same
    # address reuses it, as a row pointing at the one that was measured.
    address: Mapped[str | None] = mapped_column(String(64), index=True)
    reused_from_id: Mapped[int | None] = mapped_column(ForeignKey("power_check_outcomes.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Measurement(Base):
    """What one validation stage measured of one model (its content hash), kept by the address of
    everything the figures depend on (validation.memo): found there, they are never measured again."""

    __tablename__ = "measurements"
    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(64), unique=True)
    stage: Mapped[str] = mapped_column(String(32))
    model_hash: Mapped[str] = mapped_column(String(64), index=True)
    figures: Mapped[dict] = mapped_column(JSON)  # per window, item or probe: what the stage's gates are computed from
    run_id: Mapped[str | None] = mapped_column(String(64))  # the Dagster run that measured it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("model", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(255), index=True)
    version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # promoted | rejected | rolled_back
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))
    quantization_run_id: Mapped[int | None] = mapped_column(ForeignKey("quantization_runs.id"))
    path: Mapped[str | None] = mapped_column(Text)  # the release folder; None when rejected
    reason: Mapped[str | None] = mapped_column(Text)
    manifest: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReleaseEvent(Base):
    """Every promotion, rejection and rollback, in order: the audit trail behind `status`."""

    __tablename__ = "release_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
