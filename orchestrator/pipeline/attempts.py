"""Attempts at a release: which one to start next, how a failed one failed, and what a killed one
left behind. The checkpoint sensor, the failure sensor and `awq-release run` share these."""

import time

import dagster as dg
from sqlalchemy import Engine

from orchestrator.lineage.queries import end_attempt, running_attempts

LAUNCHER_TAG = "awq_release/launcher"  # runs `awq-release run` executes itself: only these can it know dead
UNFINISHED = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
SETTLED = {  # attempts that ended like this are never retried
    "released": "released before",
    "rejected": (
        "rejected by its gates (see `awq-release history`): copy the checkpoint in anew to try again, or after "
        "changing the policy launch the release job for this partition from the Dagster UI"
    ),
    "duplicate": "its content was released before from another folder",
}


def next_attempt(statuses: list[str], max_attempts: int) -> int | str:
    """The number of the attempt to start for a folder whose earlier attempts ended as `statuses`,
    or why none starts."""
    for status, why in SETTLED.items():
        if status in statuses:
            return why
    if "running" in statuses:
        return "an attempt is running"
    if len(statuses) >= max_attempts:
        return (
            f"failed {len(statuses)} times, the policy's max_attempts: see `awq-release history`, "
            "fix the cause and copy the checkpoint in again"
        )
    return len(statuses) + 1


def failure_reason(event: dg.DagsterEvent | None) -> str:
    """The first line of what failed: the step's error where there is one."""
    if event is None:
        return "the run failed"
    data = event.event_specific_data
    error = getattr(data, "error", None)
    message = error.message if error is not None else event.message or "the run failed"
    return message.strip().splitlines()[0][:500]


def reap_killed_runs(instance: dg.DagsterInstance, engine: Engine) -> list[str]:
    """Runs an earlier `awq-release run` started and never ended: its process was killed. The caller
    holds the run lock, so none of them can still be going. Each is marked failed, the `gpu` pool
    slot its step held is freed (else the next run would wait for it forever), its attempt killed."""
    unfinished = instance.get_runs(dg.RunsFilter(tags={LAUNCHER_TAG: "in_process"}, statuses=UNFINISHED))
    for run in unfinished:
        instance.report_run_failed(run, "the process running it was killed before the run ended")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        end_attempt(engine, run.run_id, "killed", "the process running it was killed before the run ended")
    return [run.run_id for run in unfinished]


def settle_attempts(instance: dg.DagsterInstance, engine: Engine, grace_s: float = 0.0) -> None:
    """Attempts whose run failed without its end being recorded (the database was away then), at
    least `grace_s` ago (the failure sensor records the real reason first): marked failed from the
    run's status, so that the sensor retries them instead of waiting forever."""
    for run_id in running_attempts(engine):
        record = instance.get_run_record_by_id(run_id)
        if record is None:
            end_attempt(engine, run_id, "failed", "its Dagster run is gone")
        elif record.dagster_run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            if record.end_time is None or time.time() - record.end_time >= grace_s:
                end_attempt(engine, run_id, "failed", "the run failed while the lineage database could not record it")
