"""`awq-release ui` (dagster dev on the platform's home) starts; its GraphQL API lists the assets and
launches a release run; its daemon releases a dropped checkpoint; SIGTERM stops all of it in seconds."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import yaml

from deploy.server import free_port
from orchestrator.cli.main_job import prepare_home
from tests.conftest import RELEASE_ASSETS, make_tiny_model, tiny_policy
from tests.fake_openai import FakeOpenAI

REPO = Path(__file__).resolve().parents[2]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        data = json.loads(reply.read())
    assert "errors" not in data, data
    return data["data"]


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout_s:.0f} s")


def up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def ignore_sigint() -> None:
    """What a shell's background start (`cmd &`, nohup, an init script) gives the child."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def dagster_dev(env: dict, port: int, log_path: Path) -> Iterator[subprocess.Popen]:
    """`awq-release ui` (webserver, daemon, code server) as the README starts it, in the background,
    until the block ends; then SIGTERM to its process alone must stop it and every child within
    STOP_S (its group is killed and the test fails otherwise)."""
    awq_release = Path(sys.executable).parent / "awq-release"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [awq_release, "ui", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=ignore_sigint,
        )
    try:
        wait_until(lambda: up(port) or server.poll() is not None, 240, "dagster dev answered")
        assert server.poll() is None, log_path.read_text()[-3000:]
        yield server
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(STOP_S)
            wait_until(lambda: group_gone(server.pid), STOP_S, "every child of dagster dev ended")
        except (subprocess.TimeoutExpired, AssertionError) as stuck:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            raise AssertionError(
                f"dagster dev ignored SIGTERM for {STOP_S} s:\n{log_path.read_text()[-2000:]}"
            ) from stuck


STOP_S = 15


def test_dagster_dev_lists_assets_and_launches_a_release(tmp_path, monkeypatch):
    home = tmp_path / "platform"
    dagster_home = prepare_home(home)
    (home / "policy.yaml").write_text("{}\n")
    # ingest refuses it at once (no tokenizer, no weights): the launched run ends quickly
    broken = home / "checkpoints" / "no-weights"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("checkpoints", ["no-weights"])

    port = free_port()
    env = os.environ | {"DAGSTER_HOME": str(dagster_home), "AWQ_RELEASE_HOME": str(home)}
    with dagster_dev(env, port, tmp_path / "dagster-dev.log"):
        nodes = wait_until(
            lambda: graphql(port, "{ assetNodes { assetKey { path } } }")["assetNodes"], 120, "the code location loaded"
        )
        assert {"/".join(n["assetKey"]["path"]) for n in nodes} == RELEASE_ASSETS

        repos = graphql(
            port, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
        )["repositoriesOrError"]["nodes"]
        launched = graphql(
            port,
            """mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
              __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
              ... on RunConfigValidationInvalid { errors { message } } } }""",
            {
                "params": {
                    "selector": {
                        "repositoryLocationName": repos[0]["location"]["name"],
                        "repositoryName": repos[0]["name"],
                        "jobName": "release_job",
                    },
                    "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "no-weights"}]},
                }
            },
        )["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]

        def finished():
            run = graphql(
                port,
                "query ($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } } } }",
                {"id": run_id},
            )["runOrError"]
            return run if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

        run = wait_until(finished, 240, "the launched run finished")
        assert run["status"] == "FAILURE"  # the checkpoint has no weights: ingest refuses, nothing is promoted
        assert {"key": "dagster/partition", "value": "no-weights"} in run["tags"]
        events = graphql(
            port,
            """query ($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
              __typename ... on ExecutionStepFailureEvent { stepKey error { message causes { message } } } } } } }""",
            {"id": run_id},
        )["logsForRun"]["events"]
        failures = [e for e in events if e["__typename"] == "ExecutionStepFailureEvent"]
        assert [f["stepKey"] for f in failures] == ["checkpoint"], failures
        # refused by ingest's checks, not broken wiring
        assert "CheckpointError" in failures[0]["error"]["causes"][0]["message"]
        assert not (home / "registry").exists() or not any((home / "registry").iterdir())


def runs_of(instance: dg.DagsterInstance, partition: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(tags={"dagster/partition": partition})))


def ticks_since(instance: dg.DagsterInstance, since: float) -> int:
    """Ticks of the checkpoint sensor the daemon has finished since `since` (a time.time())."""
    states = [s for s in instance.all_instigator_state() if s.instigator_name == "checkpoint_sensor"]
    ticks = [
        t for state in states for t in instance.get_ticks(state.instigator_origin_id, state.selector_id, after=since)
    ]
    return sum(t.status.value != "STARTED" for t in ticks)


def test_the_daemon_releases_a_dropped_checkpoint_exactly_once(tmp_path, tokenizer_dir, calib_file, task_files):
    """A real daemon and code server (`dagster dev`), the queued run coordinator and the gpu pool:
    the sensor launches one run for a dropped checkpoint, which promotes it; the same content dropped
    again launches nothing over the daemon's next ticks. (A copy still being written is the sensor's
    own unit test, with ticks it calls itself: tests/unit/test_ingest_and_sensor.py.)"""
    home = tmp_path / "platform"
    dagster_home = prepare_home(home)
    tasks = task_files["world_capitals"]
    model = make_tiny_model(tmp_path / "tiny", tokenizer_dir)
    port = free_port()
    env = os.environ | {
        "DAGSTER_HOME": str(dagster_home),
        "AWQ_RELEASE_HOME": str(home),
        "AWQ_RELEASE_SENSOR_INTERVAL_S": "5",
        "HF_HUB_OFFLINE": "1",
    }
    with FakeOpenAI() as endpoint:
        (home / "policy.yaml").write_text(yaml.safe_dump(tiny_policy(calib_file, tasks, endpoint.base_url)))
        (home / "checkpoints").mkdir(parents=True)
        shutil.copytree(model, home / "checkpoints" / ".bot.copying")  # hidden while copying
        (home / "checkpoints" / ".bot.copying").rename(home / "checkpoints" / "bot")
        with dagster_dev(env, port, tmp_path / "dagster-dev.log") as server:
            current = home / "registry" / "tiny-bot" / "current"
            wait_until(lambda: current.exists() or server.poll() is not None, 600, "the sensor's run promoted tiny-bot")
            assert server.poll() is None, (tmp_path / "dagster-dev.log").read_text()[-3000:]
            assert json.loads((current / "manifest.json").read_text())["version"] == "v0001"

            # The same content again (a copy keeping its files' times): stable from the next tick on,
            # so three finished ticks are enough for the sensor to have launched it, had it wanted to.
            dropped = time.time()
            shutil.copytree(home / "checkpoints" / "bot", home / "checkpoints" / "bot-again")
            with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
                wait_until(lambda: ticks_since(instance, dropped) >= 3, 120, "three sensor ticks")
                (run,) = runs_of(instance, "bot")
                assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["awq_release/attempt"] == "1"
                assert runs_of(instance, "bot-again") == []
                enqueued = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED)
                assert enqueued.records, "the run went through the queued run coordinator"
    assert (
        subprocess.run(["pgrep", "-f", f"dagster dev -m orchestrator.definitions -h 127.0.0.1 -p {port}"]).returncode
        == 1
    )
