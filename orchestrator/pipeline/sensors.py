"""The sensors: the checkpoint sensor starts one attempt per completely written folder, retrying a
failed or killed one; the failure sensor records how a daemon-launched attempt failed.

Completeness: a folder counts as written when its file list, sizes and modification times (its stat
signature) are unchanged across two consecutive ticks; no marker file is needed from the training
job, hidden folders (.name) are skipped as copies in progress, and a tick reads no file's bytes.
Each attempt is keyed by the signature and its number; the lineage database says how earlier
attempts ended, and ingest finds content that was released before under another folder.
"""

import json
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from deploy.registry import safe_name
from orchestrator import environment
from orchestrator.lineage.queries import attempt_statuses, end_attempt
from orchestrator.pipeline.attempts import failure_reason, next_attempt, settle_attempts
from orchestrator.pipeline.jobs import release_job
from orchestrator.pipeline.partitions import CHECKPOINTS, SOURCE_TAG
from orchestrator.pipeline.resources import LineageDatabase, Platform
from orchestrator.release.hashing import stat_signature
from orchestrator.release.policy import max_attempts_in


def scan(
    checkpoints_dir: Path,
    cursor: dict,
    known_partitions: set[str],
    statuses_of: Callable[[str], list[str]],
    max_attempts: int,
    log,
) -> tuple[list[dg.RunRequest], list[str], dict]:
    """One tick: (run requests, partitions to add, next cursor). Logs why each folder is skipped."""
    last_seen: dict = cursor.get("signatures", {})
    requested: list = cursor.get("requested", [])  # run keys asked for already: an attempt not yet begun
    signatures, requests, new_keys = {}, [], []
    for folder in sorted(p for p in checkpoints_dir.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            log.info(f"skip {folder.name!r}: hidden folder (a copy in progress)")
            continue
        source = signatures[folder.name] = stat_signature(folder)
        # Settled first: a folder released (or refused) before is said to be so, not to be new.
        attempt = next_attempt(statuses_of(source), max_attempts)
        if isinstance(attempt, str):
            log.info(f"skip {folder.name!r}: {attempt}")
            continue
        if folder.name not in last_seen:
            log.info(f"skip {folder.name!r}: first seen; taken at the next tick if it is unchanged by then")
            continue
        if last_seen[folder.name] != source:
            log.info(f"skip {folder.name!r}: changed since the last tick (still being written); taken once unchanged")
            continue
        key = safe_name(folder.name)
        run_key = f"{source}:{attempt}"
        if run_key in requested:
            log.info(f"skip {folder.name!r}: attempt {attempt} was requested already")
            continue
        requested.append(run_key)
        tags = {"checkpoint_folder": folder.name, SOURCE_TAG: source, "awq_release/attempt": str(attempt)}
        requests.append(dg.RunRequest(run_key=run_key, partition_key=key, tags=tags))
        if key not in known_partitions and key not in new_keys:
            new_keys.append(key)
    return requests, new_keys, {"signatures": signatures, "requested": requested}


# A folder is taken after two unchanged ticks, so about two intervals after its copy ends.
TICK_SECONDS = environment.sensor_interval_s()


@dg.sensor(job=release_job, minimum_interval_seconds=TICK_SECONDS, default_status=dg.DefaultSensorStatus.RUNNING)
def checkpoint_sensor(
    context: dg.SensorEvaluationContext, platform: Platform, lineage: LineageDatabase
) -> dg.SensorResult:
    checkpoints_dir = Path(platform.checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    known = set(context.instance.get_dynamic_partitions(CHECKPOINTS.name))
    engine = lineage.engine()
    settle_attempts(context.instance, engine, grace_s=300)
    requests, new_keys, cursor = scan(
        checkpoints_dir,
        json.loads(context.cursor or "{}"),
        known,
        lambda source: attempt_statuses(engine, source),
        max_attempts_in(platform.policy_path),
        context.log,
    )
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[CHECKPOINTS.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(cursor),
        skip_reason=None if requests else "no new, completely written checkpoint",
    )


@dg.run_failure_sensor(monitored_jobs=[release_job], default_status=dg.DefaultSensorStatus.RUNNING)
def attempt_failure_sensor(context: dg.RunFailureSensorContext, lineage: LineageDatabase) -> None:
    """Under the daemon: record how the attempt failed (on Kubernetes, the run launcher's health check
    fails a killed worker's run too, and it lands here)."""
    step_failures = context.get_step_failure_events()
    reason = failure_reason(step_failures[0] if step_failures else context.failure_event)
    end_attempt(lineage.engine(), context.dagster_run.run_id, "failed", reason)
