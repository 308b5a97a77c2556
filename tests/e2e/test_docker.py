"""A release on Dagster's docker_executor, where a Docker engine runs: `awq-release run --no-demo`
with AWQ_RELEASE_EXECUTOR=docker runs each step in a fresh container of the platform's image, which
mounts the platform's folders at their own paths (the checkpoints read-only) and shares the host's
network with the run. Elsewhere it skips with the reason."""

import os
import re
import socket
import subprocess

import pytest
import yaml
from sqlalchemy import create_engine

from orchestrator.lineage import session_scope
from orchestrator.lineage.models import ReleaseAttempt
from orchestrator.lineage.queries import placements
from tests.conftest import CLI, make_tiny_model, tiny_policy
from tests.fake_openai import FakeOpenAI

docker = pytest.importorskip("docker", reason="the `docker` extra (dagster-docker) is not installed")
IMAGE = os.environ.get("AWQ_RELEASE_IMAGE", "awq-release:cpu")
STEPS = {"checkpoint", "calibration_set", "awq_model", "perplexity_validation", "tasks_validation"}
STEPS |= {"long_context_validation", "load_validation", "power_check", "release"}


@pytest.fixture(scope="module")
def engine() -> "docker.DockerClient":
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        pytest.skip(f"no Docker engine runs here ({e})")
    return client


@pytest.fixture(scope="module")
def image(engine) -> str:
    """The image, rebuilt on this checkout: its dependency layer is cached, so only the code is new."""
    try:
        engine.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"no image {IMAGE}: build it once with `bash scripts/build-image.sh` (minutes)")
    built = subprocess.run(["bash", "scripts/build-image.sh"], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return IMAGE


def test_each_step_runs_in_a_container_of_its_own_and_the_release_is_promoted(
    engine, image, tmp_path, calib_file, task_files, tokenizer_dir
):
    home = tmp_path / ".platform"  # the default home, relative to where `awq-release run` is started
    make_tiny_model(home / "checkpoints" / "tiny", tokenizer_dir)
    with FakeOpenAI() as endpoint:  # on the host's loopback: the containers share its network
        policy = tiny_policy(calib_file, task_files["world_capitals"], endpoint.base_url)
        policy["validation"]["power_check"] = {"run": False}
        (home / "policy.yaml").write_text(yaml.safe_dump(policy))
        env = {k: v for k, v in os.environ.items() if k != "AWQ_RELEASE_HOME"} | {
            "AWQ_RELEASE_EXECUTOR": "docker",
            "AWQ_RELEASE_IMAGE": image,
            "AWQ_RELEASE_DOCKER_VOLUMES": f"{calib_file.parent}:{task_files['world_capitals'].parent}",
            "HF_HUB_OFFLINE": "1",
        }
        command = [CLI, "run", "--no-demo"]
        run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (home / "registry" / "tiny-bot" / "releases" / "v0001" / "manifest.json").is_file()

    with session_scope(create_engine(f"sqlite:///{home / 'lineage.db'}")) as session:
        (attempt,) = session.query(ReleaseAttempt).all()
        rows = [(p.step, p.host, p.worker, p.status) for p in placements(session, attempt.run_id)]
    assert {step for step, *_ in rows} == STEPS and all(status == "success" for *_, status in rows), rows
    assert {host for _, host, _, _ in rows} == {socket.gethostname()}  # the machine, not the container
    workers = [worker for _, _, worker, _ in rows]
    assert all(re.fullmatch("container [0-9a-f]{12}", w) for w in workers), workers
    assert len(set(workers)) == len(STEPS), workers  # a fresh container per step
    # the run removed its step containers once it ended
    assert not [c.name for c in engine.containers.list(all=True) if c.name.startswith("dagster-step-")]


def test_a_missing_image_is_one_clear_error_before_anything_runs(engine, tmp_path):
    env = os.environ | {
        "AWQ_RELEASE_HOME": str(tmp_path / "home"),
        "AWQ_RELEASE_EXECUTOR": "docker",
        "AWQ_RELEASE_IMAGE": "awq-release:no-such-tag",
    }
    run = subprocess.run([CLI, "run", "--no-demo"], env=env, capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith("error: ") and "scripts/build-image.sh" in run.stderr
    assert not (tmp_path / "home" / "lineage.db").exists()
