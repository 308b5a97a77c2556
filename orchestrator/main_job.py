"""The main job, in process: drop a checkpoint in the watched folder, tick the sensor, run the release job.

`awq-release run` uses it on the embedded default (the demo model, SQLite, CPU); `dagster dev`
does the same with a daemon ticking the sensor.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import yaml

from orchestrator.definitions import defs, platform_home
from orchestrator.demo import DemoAssets, demo_validation_settings

DAGSTER_YAML = Path(__file__).with_name("dagster.yaml")


@dataclass
class JobOutcome:
    partition_key: str
    success: bool
    run_id: str


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
        # 2048 search tokens (4 of the 16 windows) instead of 4096: the demo fits 10 minutes on a 2-core AVX2 CPU.
        "quantization": {"group_size": 64, "search_tokens": 2048},
        # CUDA if present, else bf16 only on CPUs that multiply it natively
        "compute": {"device": "auto", "dtype": "auto"},
        "validation": demo_validation_settings(assets),
        "target_gpu": {"name": "H100 80GB", "memory_gib": 80},
        "serving": {"max_model_len": 8192, "max_num_seqs": 16, "dtype": "bfloat16"},
    }
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def tick_and_run(instance: dg.DagsterInstance, resources: dict, max_ticks: int = 3) -> list[JobOutcome]:
    """Tick the sensor until it requests runs (a checkpoint is taken once unchanged over two ticks),
    add the partitions it asks for, then execute in this process each run whose run key (the
    checkpoint's content hash) has no run yet, as the daemon would."""
    sensor = defs.resolve_sensor_def("checkpoint_sensor")
    cursor, requests = None, []
    for _ in range(max_ticks):
        result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))
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
    outcomes = []
    for request in requests:
        tags = request.tags | {"dagster/run_key": request.run_key}
        run = job.execute_in_process(
            instance=instance, partition_key=request.partition_key, resources=resources, tags=tags, raise_on_error=False
        )
        outcomes.append(JobOutcome(request.partition_key, run.success, run.run_id))
    return outcomes


def run_demo(assets: DemoAssets) -> list[JobOutcome]:
    home = platform_home()
    os.environ["DAGSTER_HOME"] = str(prepare_home(home))
    resources = defs.resources
    platform = resources["platform"]
    write_release_policy(assets, Path(platform.policy_path))
    target = Path(platform.checkpoints_dir) / assets.model_dir.name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # hidden while copying: the sensor skips it
        shutil.copytree(assets.model_dir, target.with_name(f".{target.name}.copying"))
        target.with_name(f".{target.name}.copying").rename(target)
    with dg.DagsterInstance.get() as instance:
        return tick_and_run(instance, resources)
