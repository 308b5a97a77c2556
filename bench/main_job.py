"""The main job's cost, and what finished work saves, in one run on one fresh platform home:

cold       `awq-release run` on an empty home: the demo checkpoint quantized, validated, power
           checked and released;
fine-tune  a changed fine-tune of the same base dropped beside it (every weight moved a little):
           quantized and measured afresh, its power check's table reused (same settings, same base);
retry      a third fine-tune whose run is SIGKILLed as its load stage starts, then the retry that
           `awq-release run` makes of it: quantization and the finished stages found, the load
           stage and the release done.

    .venv/bin/python -m bench.main_job [--home DIR]

Each pass is timed as a user runs it (a fresh `awq-release` process) and given as a ratio to cold;
the figures say what each pass reused, from the lineage database, and each step's time, from
Dagster's instance. Run it on an otherwise idle machine: concurrent torch processes inflate every
figure. Writes bench/results/main_job-DATE-COMMIT.json.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import torch
from safetensors.torch import load_file, save_file
from sqlalchemy import select

from bench.results import cpu_kind, write_result
from orchestrator.lineage import session_scope, upgrade
from orchestrator.lineage.models import PowerCheckOutcome, QuantizationRun, ValidationStage

CLI = str(Path(sys.executable).parent / "awq-release")
FINE_TUNE_SCALE = 1e-3  # of each weight tensor's spread: a fine-tune moves every weight a little
TARGETS = {"retry_ratio": 0.15, "fine_tune_ratio": 0.50, "cold_s": {"AVX-512 BF16": 360, "AVX2": 600}}

# `awq-release run --no-demo` that SIGKILLs itself as the load stage starts.
KILLED_AT_LOAD = """
import os, signal, sys
import orchestrator.pipeline.assets as assets
from orchestrator.cli.main import main
real = assets.run_stage
def killed_at_load(stage, *args, **kwargs):
    if stage == "load":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(stage, *args, **kwargs)
assets.run_stage = killed_at_load
sys.exit(main(["run", "--no-demo"]))
"""


def timed_pass(home: Path, *command: str) -> tuple[float, int, str]:
    """One process as a user starts it, with AWQ_RELEASE_HOME set: (seconds, exit code, output)."""
    start = time.perf_counter()
    env = os.environ | {"AWQ_RELEASE_HOME": str(home)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode, done.stdout + done.stderr


def checked_pass(home: Path, name: str, *command: str, expect: int = 0) -> float:
    seconds, code, output = timed_pass(home, *command)
    print(f"{name}: {seconds:.0f} s, exit {code}", flush=True)
    if code != expect:
        raise SystemExit(f"error: the {name} pass exited {code}, not {expect}:\n{output[-3000:]}")
    return seconds


def drop_fine_tune(checkpoints: Path, source: Path, name: str, seed: int) -> None:
    """A copy of `source` with every floating tensor moved by FINE_TUNE_SCALE of its spread, placed
    in the watched folder whole (written under a hidden name, then renamed)."""
    hidden = checkpoints / f".{name}.copying"
    shutil.copytree(source, hidden)
    generator = torch.Generator().manual_seed(seed)
    for shard in hidden.glob("*.safetensors"):
        tensors = load_file(shard)
        for key, tensor in tensors.items():
            if tensor.is_floating_point() and tensor.numel() > 1:
                noise = torch.randn(tensor.shape, generator=generator) * tensor.float().std() * FINE_TUNE_SCALE
                tensors[key] = (tensor.float() + noise).to(tensor.dtype)
        save_file(tensors, shard, metadata={"format": "pt"})
    hidden.rename(checkpoints / name)


def reuse_by_run(home: Path) -> list[dict]:
    """What each quantization run (one per pass that got that far) reused, from the lineage database."""
    with session_scope(upgrade(f"sqlite:///{home / 'lineage.db'}")) as session:
        runs = session.scalars(select(QuantizationRun).order_by(QuantizationRun.id)).all()
        stages = session.scalars(select(ValidationStage).order_by(ValidationStage.id)).all()
        outcomes = session.scalars(select(PowerCheckOutcome).order_by(PowerCheckOutcome.id)).all()
        return [
            {
                "quantization_run": run.id,
                "quantization_reused_from": run.reused_from_id,
                "stages_reused": {s.stage: s.reused for s in stages if s.quantization_run_id == run.id},
                "power_check_reused": any(
                    o.reused_from_id is not None for o in outcomes if o.quantization_run_id == run.id
                ),
            }
            for run in runs
        ]


def step_seconds(home: Path) -> list[dict[str, float]]:
    """Each Dagster run's step times, oldest run first."""
    os.environ["DAGSTER_HOME"] = str(home / "dagster_home")  # the instance the passes ran on
    with dg.DagsterInstance.get() as instance:
        runs = sorted(instance.get_runs(), key=lambda r: instance.get_run_stats(r.run_id).start_time or 0)
        return [
            {
                s.step_key: round(s.end_time - s.start_time, 1)
                for s in instance.get_run_step_stats(run.run_id)
                if s.start_time and s.end_time
            }
            for run in runs
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--home", type=Path, help="an empty or absent folder for the platform (default: a temporary one)"
    )
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="main-job-"))
    if home.exists() and any(home.iterdir()):
        raise SystemExit(f"error: {home} is not empty: the cold pass needs a platform home of its own.")

    cold = checked_pass(home, "cold", CLI, "run")
    checkpoints = home / "checkpoints"
    (demo,) = [p for p in checkpoints.iterdir() if p.is_dir()]
    drop_fine_tune(checkpoints, demo, f"{demo.name}-tuned", seed=1)
    fine_tune = checked_pass(home, "fine-tune", CLI, "run", "--no-demo")
    drop_fine_tune(checkpoints, demo, f"{demo.name}-tuned-again", seed=2)
    killed = checked_pass(home, "killed", sys.executable, "-c", KILLED_AT_LOAD, expect=-signal.SIGKILL)
    retry = checked_pass(home, "retry", CLI, "run", "--no-demo")

    kind = cpu_kind()
    figures = {
        "cold_s": cold,
        "fine_tune_s": fine_tune,
        "killed_pass_s": killed,
        "retry_s": retry,
        "fine_tune_ratio": fine_tune / cold,
        "retry_ratio": retry / cold,
        "within_targets": {
            "cold": cold <= TARGETS["cold_s"].get(kind, TARGETS["cold_s"]["AVX2"]),
            "fine_tune": fine_tune / cold <= TARGETS["fine_tune_ratio"],
            "retry": retry / cold <= TARGETS["retry_ratio"],
        },
        "reused": reuse_by_run(home),
        "step_seconds": step_seconds(home),
    }
    print(
        f"cold {cold:.0f} s; fine-tune {fine_tune:.0f} s ({figures['fine_tune_ratio']:.0%} of cold); "
        f"retry after a kill in the load stage {retry:.0f} s ({figures['retry_ratio']:.0%} of cold)"
    )
    write_result("main_job", {"home": str(home), "fine_tune_scale": FINE_TUNE_SCALE, "targets": TARGETS}, figures)


if __name__ == "__main__":
    main()
