"""`dagster dev -w workspace.yaml` starts; its GraphQL API lists the assets and launches a release run."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from deploy.server import free_port
from orchestrator.main_job import prepare_home
from tests.conftest import RELEASE_ASSETS

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


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
    dagster = Path(sys.executable).parent / "dagster"
    log = (tmp_path / "dagster-dev.log").open("w")
    server = subprocess.Popen(
        [dagster, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: up(port) or server.poll() is not None, 240, "dagster dev answered")
        assert server.poll() is None, (tmp_path / "dagster-dev.log").read_text()[-3000:]
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
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
