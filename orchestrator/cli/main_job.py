"""The main job, in process: drop a checkpoint in the watched folder, tick the sensor, run the release job.

`awq-release run` uses it on the embedded default (the demo model, SQLite, CPU); `dagster dev`
does the same with a daemon ticking the sensor.
"""

import fcntl
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import yaml

from awq_release.demo import DEMO_SERVING, DemoAssets, demo_validation_settings
from awq_release.errors import ReleaseError
from orchestrator.definitions import build_definitions, release_job_definition
from orchestrator.environment import executor_name, platform_home
from orchestrator.lineage.queries import attempt_statuses, end_attempt
from orchestrator.pipeline.assets import RECOMPUTE_TAG
from orchestrator.pipeline.attempts import LAUNCHER_TAG, failure_reason, next_attempt, reap_killed_runs, settle_attempts
from orchestrator.pipeline.metadata import did_not_run
from orchestrator.pipeline.placement import require_executor_reachable
from orchestrator.pipeline.resources import default_resources
from orchestrator.release.hashing import stat_signature
from orchestrator.release.policy import max_attempts_in

DAGSTER_YAML = Path(__file__).parents[1] / "dagster.yaml"


@dataclass
class JobOutcome:
    partition_key: str
    success: bool
    run_id: str
    step_seconds: dict[str, float | None]  # every step of the job in order; None: it did not run
    seconds: float  # the run's wall time, from its start to its end


def step_seconds(
    instance: dg.DagsterInstance, run_id: str, events: list[dg.DagsterEvent], job: dg.JobDefinition
) -> dict:
    """Each step's time, in the job's order; None for a step that was skipped, never started, or
    says it did not run (a power check the policy turned off)."""
    stats = {s.step_key: s for s in instance.get_run_step_stats(run_id)}
    idle = {
        event.step_key
        for event in events
        if event.is_step_materialization and did_not_run(event.step_materialization_data.materialization.metadata)
    }

    def seconds(step: str) -> float | None:
        s = stats.get(step)
        if s is None or step in idle or s.status.value == "SKIPPED" or not (s.start_time and s.end_time):
            return None
        return s.end_time - s.start_time

    return {node.name: seconds(node.name) for node in job.nodes_in_topological_order}


def run_seconds(instance: dg.DagsterInstance, run_id: str) -> float:
    stats = instance.get_run_stats(run_id)
    return (stats.end_time or 0.0) - (stats.start_time or 0.0)


def console_logging(level: str) -> dict:
    """Run config for the job's console logger: INFO shows each step's outcome, DEBUG every Dagster event."""
    return {"loggers": {"console": {"config": {"log_level": level}}}}


def prepare_home(home: Path) -> Path:
    """The local instance's folder with its dagster.yaml; returns DAGSTER_HOME."""
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(DAGSTER_YAML, dagster_home / "dagster.yaml")
    return dagster_home


def write_release_policy(assets: DemoAssets, path: Path) -> Path:
    """The demo's release policy: calibration on SOTU before 2000, validation sized for a CPU."""
    policy = {
        "model_name": "smollm2-135m-instruct",
        "calibration": {"texts": [str(p) for p in assets.calibration_texts], "n_samples": 16, "seqlen": 512},
        # 2048 search tokens (4 of the 16 windows) instead of 4096: the demo's time budget on a 2-core CPU.
        "quantization": {"group_size": 64, "search_tokens": 2048},
        # CUDA if present, else bf16 only on CPUs that multiply it natively
        "compute": {"device": "auto", "dtype": "auto"},
        "validation": demo_validation_settings(assets),
        "target_gpu": {"name": "H100 80GB", "memory_gib": 80},
        "serving": DEMO_SERVING,
        "card": {"license": "apache-2.0", "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def tick_and_run(
    instance: dg.DagsterInstance,
    resources: dict,
    max_ticks: int = 3,
    log_level: str = "INFO",
    recompute: bool = False,
) -> list[JobOutcome]:
    """Tick the sensor until it requests runs (a checkpoint is taken once unchanged over two ticks),
    add the partitions it asks for, then execute in this process each run whose run key (the folder's
    stat signature and attempt number) has no run yet, as the daemon would, and record how it failed.
    recompute: those runs reuse no finished work (RECOMPUTE_TAG)."""
    defs = build_definitions()
    sensor = defs.resolve_sensor_def("checkpoint_sensor")
    # The sensor's own resources only: the runs' engines (ScoringEngines) are opened by each run.
    watching = {key: resources[key] for key in sensor.required_resource_keys}
    cursor, requests = None, []
    for _ in range(max_ticks):
        result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=watching))
        cursor = result.cursor
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        requests = [
            r
            for r in result.run_requests
            if not instance.get_runs_count(dg.RunsFilter(tags={"dagster/run_key": r.run_key}))
        ]
        if result.run_requests:
            break
    job = defs.resolve_job_def("release_job")
    engine = resources["lineage"].engine()

    def outcome(request: dg.RunRequest, run_id: str, success: bool) -> JobOutcome:
        events = [entry.dagster_event for entry in instance.all_logs(run_id) if entry.dagster_event]
        if not success:
            failures = [e for e in events if e.is_step_failure] or [None]
            end_attempt(engine, run_id, "failed", failure_reason(failures[0]))
        steps = step_seconds(instance, run_id, events, job)
        return JobOutcome(request.partition_key, success, run_id, steps, run_seconds(instance, run_id))

    def tags_of(request: dg.RunRequest) -> dict:
        tags = request.tags | {"dagster/run_key": request.run_key, LAUNCHER_TAG: "in_process"}
        return tags | ({RECOMPUTE_TAG: "true"} if recompute else {})

    config = console_logging(log_level)
    if executor_name() == "in_process" or not requests:
        outcomes = []
        for request in requests:
            run = job.execute_in_process(
                run_config=config,
                instance=instance,
                partition_key=request.partition_key,
                resources=resources,
                tags=tags_of(request),
                raise_on_error=False,
            )
            outcomes.append(outcome(request, run.run_id, run.success))
        return outcomes
    # Beyond this process the runs share the workers, all at once, each waiting on its steps from a
    # process of its own, as the daemon's run workers do (Dagster's run set-up is not thread-safe).
    with multiprocessing.get_context("spawn").Pool(len(requests), initializer=die_with_parent) as pool:
        started = [pool.apply_async(execute_elsewhere, (r.partition_key, tags_of(r), config)) for r in requests]
        ended = [run.get() for run in started]
        pool.close()
        pool.join()  # each process exits by itself: leaving the block would SIGTERM them mid-exit
    return [outcome(request, *run) for request, run in zip(requests, ended, strict=True)]


def die_with_parent() -> None:
    """A run's process gets SIGTERM when `awq-release run` dies (Linux), so none is left behind."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def execute_elsewhere(partition_key: str, tags: dict, run_config: dict) -> tuple[str, bool]:
    """One run of the release job under an executor that runs its steps elsewhere (the job rebuilt
    there from its module): (run id, success)."""
    recon = dg.reconstructable(release_job_definition)
    with dg.DagsterInstance.get() as instance:
        tags = tags | {"dagster/partition": partition_key}
        result = dg.execute_job(recon, instance, run_config=run_config, tags=tags, raise_on_error=False)
        if executor_name() == "docker":
            from orchestrator.distributed.containers import remove_step_containers

            steps = [stats.step_key for stats in instance.get_run_step_stats(result.run_id)]
            remove_step_containers(result.run_id, steps)
        return result.run_id, result.success


def why_not_started(assets: DemoAssets) -> str:
    """What the sensor says of the demo folder when it starts no attempt."""
    resources = default_resources()
    platform, lineage = resources["platform"], resources["lineage"]
    source = stat_signature(Path(platform.checkpoints_dir) / assets.model_dir.name)
    verdict = next_attempt(attempt_statuses(lineage.engine(), source), max_attempts_in(platform.policy_path))
    return verdict if isinstance(verdict, str) else "it was still being written"


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """One `awq-release run` at a time per platform home."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise ReleaseError(f"Another `awq-release run` holds {path}: wait for it to end.") from e
        yield


def run_platform(log_level: str = "INFO", recompute: bool = False) -> list[JobOutcome]:
    """One pass of the platform over its watched folder, in this process: what the daemon would
    start, after marking runs an earlier pass left unfinished (it was killed) as failed."""
    require_executor_reachable()
    home = platform_home()
    os.environ["DAGSTER_HOME"] = str(prepare_home(home))
    with run_lock(home / "run.lock"), dg.DagsterInstance.get() as instance:
        resources = default_resources()
        engine = resources["lineage"].engine()
        reap_killed_runs(instance, engine)
        settle_attempts(instance, engine)
        return tick_and_run(instance, resources, log_level=log_level, recompute=recompute)


def run_demo(assets: DemoAssets, log_level: str = "INFO", recompute: bool = False) -> list[JobOutcome]:
    platform = default_resources()["platform"]
    write_release_policy(assets, Path(platform.policy_path))
    target = Path(platform.checkpoints_dir) / assets.model_dir.name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # hidden while copying: the sensor skips it
        shutil.copytree(assets.model_dir, target.with_name(f".{target.name}.copying"))
        target.with_name(f".{target.name}.copying").rename(target)
    return run_platform(log_level, recompute)
