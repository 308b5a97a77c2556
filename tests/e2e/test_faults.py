"""Real faults, each a process killed with SIGKILL where it hurts most, and what the next run makes
of it: a quantization killed midway is retried and resumes at its first unfinished block, releasing
exactly what a run that was never killed would have; a run killed after quantization reuses the
finished model and the figures of the stages that had finished instead of measuring them again; a
promotion killed midway leaves the previous release current and intact, and the next run brings
registry and database back into agreement."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from safetensors.torch import load_file
from sqlalchemy import select

import orchestrator.pipeline.assets as assets_module
from awq_core import QuantConfig, quantize
from awq_release.errors import PromotionError
from deploy.engine import Serving
from deploy.registry import current_version, versions_on_disk
from orchestrator.lineage import queries as lineage
from orchestrator.lineage import session_scope, upgrade
from orchestrator.lineage.models import CalibrationSet, Checkpoint, QuantizationRun, ReleaseAttempt, ValidationStage
from orchestrator.pipeline.assets import calibration_set, checkpoint
from orchestrator.pipeline.attempts import settle_attempts
from orchestrator.pipeline.partitions import CHECKPOINTS
from orchestrator.pipeline.resources import LineageDatabase, ScoringEngines
from orchestrator.release.policy import ReleasePolicy
from orchestrator.release.promotion import promote, reconcile
from orchestrator.release.snapshots import PolicySnapshot
from tests.conftest import CLI, RELEASE_ASSETS, make_tiny_model, platform_under, postgres_cluster, tiny_policy
from tests.fake_openai import FakeOpenAI
from validation import STAGES


@pytest.fixture
def platform_home(tmp_path, tokenizer_dir, calib_file, task_files):
    home = tmp_path / "home"
    make_tiny_model(home / "checkpoints" / "tiny", tokenizer_dir, hidden=256, layers=12)
    return home, task_files["world_capitals"]


def killed_pass(target: str, when: str) -> str:
    """A `python -c` script: `awq-release run --no-demo` with `target` ("module:function") replaced
    by one that SIGKILLs the process as the call starts where `when` holds (an expression of the
    call's `args` and its number `n`, from 1)."""
    module, name = target.split(":")
    return f"""
import os, signal, sys
import {module} as target
from orchestrator.cli.main import main
real, calls = target.{name}, []
def planted(*args, **kwargs):
    calls.append(1)
    n = len(calls)
    if {when}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
target.{name} = planted
sys.exit(main(["run", "--no-demo"]))
"""


def one_pass(home: Path, *python: str) -> subprocess.Popen:
    """`awq-release run --no-demo`: one pass over the watched folder, as a user runs it; or, where
    given, the same pass through a script (`python -c ...`) that plants a fault first."""
    env = os.environ | {"AWQ_RELEASE_HOME": str(home)}
    command = [sys.executable, *python] if python else [CLI, "run", "--no-demo"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_killed_quantization_is_retried_and_resumes(platform_home, calib_file):
    home, tasks = platform_home
    with FakeOpenAI() as server:
        (home / "policy.yaml").write_text(yaml.safe_dump(tiny_policy(calib_file, tasks, server.base_url)))
        work = home / "work" / "tiny"
        # killed as the third block starts: blocks 0 and 1 are on disk
        first = one_pass(home, "-c", killed_pass("awq_core.quantizer:quantize_block", "n == 3"))
        first_output = first.communicate(timeout=900)[0].decode()
        assert first.returncode == -signal.SIGKILL, first_output[-3000:]
        assert len(list(work.glob(".awq-*.partial/.blocks/*.json"))) == 2
        assert not (home / "registry").exists()  # nothing released, nothing half-written

        second = one_pass(home)
        output = second.communicate(timeout=900)[0].decode()
        assert second.returncode == 0, output[-3000:]

    # What the terminal shows: INFO lines of each step, a bar per block, then the summary.
    assert " - DEBUG - " not in output and " - INFO - " in output and "quantizing tiny: awq, group 64" in output
    assert "AWQ blocks" in output and "12/12" in output  # the quantization bar, per block
    assert re.search(r"time: \d+ s in all; per step: checkpoint \d+ s, ", output)
    assert "release tiny-bot v0001: promoted at " in output
    assert "perplexity.domain perplexity increase" in output and "verdict" in output

    (quantized,) = work.glob("awq-*")
    report = json.loads((quantized / "quant_report.json").read_text())
    assert report["resumed_blocks"] == 2  # picked up where the killed run stopped, not from scratch
    release = home / "registry" / "tiny-bot" / "current"
    assert json.loads((release / "manifest.json").read_text())["version"] == "v0001"

    # What a run that was never killed writes, from the same calibration tokens and settings.
    (tokens,) = work.glob("calibration-*.safetensors")
    fresh = quantize(
        home / "checkpoints" / "tiny",
        home / "fresh",
        load_file(tokens)["input_ids"],
        QuantConfig(group_size=64, search_tokens=512, n_grid=10),
        progress=False,
    )
    assert fresh.resumed_blocks == 0
    for shard in sorted((home / "fresh").glob("*.safetensors")):
        released, expected = load_file(release / shard.name), load_file(shard)
        assert released.keys() == expected.keys()
        assert all((released[k] == expected[k]).all() for k in expected), shard.name

    env = os.environ | {"AWQ_RELEASE_HOME": str(home)}
    history = subprocess.run([CLI, "history"], capture_output=True, text=True, env=env).stdout
    statuses = [line.split()[2] for line in history.splitlines() if line.split()[1:2] == ["tiny"]]
    assert statuses == ["killed", "released"], history
    # Where each step of the released run ran: every one in the run's own process, on this CPU.
    with session_scope(upgrade(f"sqlite:///{home / 'lineage.db'}")) as session:
        released = session.scalars(select(ReleaseAttempt).where(ReleaseAttempt.status == "released")).one()
        rows = lineage.placements(session, released.run_id)
    assert {r.step for r in rows} == RELEASE_ASSETS and len(rows) == len(RELEASE_ASSETS)
    assert {(r.worker, r.device, r.status) for r in rows} == {("in-process", "cpu", "success")}


def test_a_run_killed_after_quantization_is_retried_without_quantizing_again(platform_home, calib_file):
    home, tasks = platform_home
    with FakeOpenAI() as server:
        (home / "policy.yaml").write_text(yaml.safe_dump(tiny_policy(calib_file, tasks, server.base_url)))
        # killed as the tasks stage starts: the model is quantized and recorded, perplexity measured
        first = one_pass(home, "-c", killed_pass("orchestrator.pipeline.assets:run_stage", "args[0] == 'tasks'"))
        first_output = first.communicate(timeout=900)[0].decode()
        assert first.returncode == -signal.SIGKILL, first_output[-3000:]
        (quantized,) = (home / "work" / "tiny").glob("awq-*")
        made = {p.name: p.read_bytes() for p in quantized.iterdir()}

        second = one_pass(home)
        output = second.communicate(timeout=900)[0].decode()
        assert second.returncode == 0, output[-3000:]
    assert "quantization reused: run 1 made" in output and "AWQ blocks" not in output  # no block quantized again
    assert re.search(r"perplexity: passed in \d+ s \(baseline and candidate figures measured before\)", output)
    with session_scope(upgrade(f"sqlite:///{home / 'lineage.db'}")) as session:
        runs = session.scalars(select(QuantizationRun).order_by(QuantizationRun.id)).all()
        assert [(r.id, r.reused_from_id) for r in runs] == [(1, None), (2, 1)]
        stages = session.scalars(select(ValidationStage).order_by(ValidationStage.id)).all()
        # the stages that had finished before the kill found their figures; the others were measured
        first = [row for row in stages if row.quantization_run_id == 1]
        finished = [row.stage for row in first]
        assert "perplexity" in finished and "tasks" not in finished and all(row.reused == [] for row in first)
        retried = {row.stage: row.reused for row in stages if row.quantization_run_id == 2}
        assert retried == {stage: ["baseline", "candidate"] if stage in finished else [] for stage in STAGES}
    assert {p.name: p.read_bytes() for p in quantized.iterdir()} == made
    release = home / "registry" / "tiny-bot" / "current"
    shards = [name for name in made if name.endswith(".safetensors")]
    assert shards and all((release / name).read_bytes() == made[name] for name in shards)  # the release is it


PROMOTE = """
import os, shutil, signal, sys
from pathlib import Path
import orchestrator.release.promotion as promotion
from deploy.engine import Serving
from orchestrator.lineage import upgrade
from orchestrator.release.snapshots import PolicySnapshot
from orchestrator.release.policy import ReleasePolicy

url, registry, run_id, point = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
if point == "copying":  # the second file of the copy is never written
    copied, real_copy = [], shutil.copyfile
    shutil.copyfile = lambda *a, **k: die() if copied else (copied.append(1), real_copy(*a, **k))[1]
elif point == "written":  # whole on disk, never recorded
    real_write = promotion.write_release
    promotion.write_release = lambda *a, **k: (real_write(*a, **k), die())
elif point == "recorded":  # recorded, `current` never moved
    promotion.point_current = die
snapshot = PolicySnapshot(0, "h", "{}", ReleasePolicy())
promotion.promote(upgrade(url), registry, "bot", run_id, snapshot, Serving(), "attempt-1")
"""


def add_run(engine, output: Path, name: str) -> int:
    with session_scope(engine) as session:
        ckpt = Checkpoint(name=name, path=str(output), content_hash=name * 8, architecture="Llama", size_bytes=1)
        session.add(ckpt)
        session.flush()
        calib = CalibrationSet(
            checkpoint_id=ckpt.id, source_hashes={}, n_samples=1, seqlen=2, tokens_path="/t", tokens_hash="t"
        )
        session.add(calib)
        session.flush()
        run = QuantizationRun(
            checkpoint_id=ckpt.id,
            calibration_set_id=calib.id,
            settings={"group_size": 64, "zero_point": True},
            seconds=1.0,
            peak_rss_mb=1.0,
            layer_errors=[],
            block_mse=[],
            output_path=str(output),
            output_hash="o",
        )
        session.add(run)
        session.flush()
        return run.id


@pytest.mark.parametrize("point", ["copying", "written", "recorded"])
def test_kill_during_promotion_keeps_the_previous_release(tmp_path, tiny_llama, point):
    url, registry = f"sqlite:///{tmp_path / 'lineage.db'}", tmp_path / "registry"
    engine = upgrade(url)
    snapshot = PolicySnapshot(0, "h", "{}", ReleasePolicy())
    first, second = (add_run(engine, tiny_llama, name) for name in ("a", "b"))
    promote(engine, registry, "bot", first, snapshot, Serving(), "attempt-1")
    v1 = registry / "bot" / "releases" / "v0001"
    v1_files = {p.name: p.read_bytes() for p in v1.iterdir()}

    killed = subprocess.run(
        [sys.executable, "-c", PROMOTE, url, str(registry), str(second), point], capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert current_version(registry, "bot") == "v0001"  # serving never saw the interrupted release
    assert {p.name: p.read_bytes() for p in v1.iterdir()} == v1_files  # and the previous one is intact
    assert versions_on_disk(registry, "bot") == (["v0001"] if point == "copying" else ["v0001", "v0002"])

    # The next run repairs first (the release asset calls reconcile), then completes or redoes the promotion.
    repairs = reconcile(engine, registry, "bot")
    assert len(repairs) == (0 if point == "copying" else 1), repairs
    if point != "recorded":
        assert promote(engine, registry, "bot", second, snapshot, Serving(), "attempt-1").version == "v0002"
    with session_scope(engine) as session:
        promoted = [r.version for r in lineage.promoted_releases(session, "bot")]
    assert promoted == versions_on_disk(registry, "bot") == ["v0001", "v0002"]  # registry and database agree
    assert current_version(registry, "bot") == "v0002"
    assert not list((registry / "bot" / "releases").glob(".*"))  # no partial copy left behind
    manifest = json.loads((registry / "bot" / "current" / "manifest.json").read_text())
    assert manifest["version"] == "v0002" and manifest["quantization"]["id"] == second


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of a few MiB (tmpfs), so writes fail with ENOSPC as on a full disk."""
    mounted = []

    def make(name: str, size_mib: int) -> Path:
        path = tmp_path / name
        path.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)], capture_output=True
        )
        if result.returncode != 0:
            pytest.skip(f"a real full disk needs a tmpfs mount, refused here ({result.stderr.decode().strip()})")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


@pytest.fixture(scope="module")
def large_vocabulary_llama(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny model whose embeddings (a 49152-token vocabulary, as SmolLM2's) outweigh its blocks, as
    in real models: the disk sizes below fit one and not the other."""
    return make_tiny_model(tmp_path_factory.mktemp("large-vocabulary"), tokenizer_dir, vocab_size=49152)


def test_full_disk_while_quantizing_is_a_clear_error(tmp_path, large_vocabulary_llama, calib_file, small_disk):
    out = small_disk("out", 2) / "awq"  # the blocks fit, the embeddings' shard does not
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    model = large_vocabulary_llama
    args = ["quantize", str(model), str(out), "--calib", str(calib_file), "--n-samples", "4", "--seqlen", "64"]
    result = subprocess.run([CLI, *args], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"The disk holding {out.parent} is full" in result.stderr and "2 finished blocks are kept" in result.stderr
    assert not out.exists()  # nothing half-written where a loader would look


def test_full_disk_while_promoting_keeps_the_previous_release(tmp_path, large_vocabulary_llama, small_disk):
    registry = small_disk("registry", 20)  # room for one release of the tiny model, not two
    engine = upgrade(f"sqlite:///{tmp_path / 'lineage.db'}")
    snapshot = PolicySnapshot(0, "h", "{}", ReleasePolicy())
    first, second = (add_run(engine, large_vocabulary_llama, name) for name in ("a", "b"))
    promote(engine, registry, "bot", first, snapshot, Serving(), "attempt-1")
    with pytest.raises(PromotionError, match=r"Could not write bot v0002 .*No space left on device"):
        promote(engine, registry, "bot", second, snapshot, Serving(), "attempt-1")
    assert current_version(registry, "bot") == "v0001" and versions_on_disk(registry, "bot") == ["v0001"]
    assert not list((registry / "bot" / "releases").glob(".*"))  # the partial copy is gone
    assert json.loads((registry / "bot" / "current" / "manifest.json").read_text())["version"] == "v0001"
    with session_scope(engine) as session:
        assert [r.version for r in lineage.releases(session, "bot")] == ["v0001"]  # no row for v0002


def test_database_lost_mid_run_fails_clearly_and_records_nothing_half(tmp_path, tiny_llama, calib_file, monkeypatch):
    shutil.copytree(tiny_llama, tmp_path / "checkpoints" / "tiny")
    policy = {"calibration": {"texts": [str(calib_file)], "n_samples": 4, "seqlen": 64}}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    with postgres_cluster() as database:
        real_ingest = assets_module.ingest

        def ingest_then_lose_the_database(*args):
            found = real_ingest(*args)
            database.stop()  # the server goes away between two writes of the step
            return found

        monkeypatch.setattr(assets_module, "ingest", ingest_then_lose_the_database)
        resource = LineageDatabase(url=database.url)
        platform = platform_under(tmp_path)
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(CHECKPOINTS.name, ["tiny"])
            result = dg.materialize(
                [checkpoint, calibration_set],
                partition_key="tiny",
                instance=instance,
                resources={"platform": platform, "lineage": resource, "scoring": ScoringEngines()},
                raise_on_error=False,
            )
            assert not result.success
            (failure,) = [e for e in result.all_events if e.is_step_failure]
            message = failure.step_failure_data.error.to_string()
            assert f"The lineage database at {database.url} is unreachable" in message
            assert "nothing of it was recorded" in message

            database.start()
            engine = resource.engine()
            with session_scope(engine) as session:
                assert session.scalars(select(Checkpoint)).all() == []  # no half-registered checkpoint
                assert [(a.run_id, a.status) for a in lineage.attempts(session)] == [(result.run_id, "running")]
            settle_attempts(instance, engine)  # what the next `awq-release run` does first: retry it, not wait
            with session_scope(engine) as session:
                assert [a.status for a in lineage.attempts(session)] == ["failed"]
    assert not (tmp_path / "registry").exists()
