"""The docker executor's set-up, without a Docker engine: which folders each step container mounts
and how, what it is told, and the one clear error where no engine answers."""

import socket

import pytest

containers = pytest.importorskip("orchestrator.distributed.containers", reason="the `docker` extra is not installed")


def test_step_containers_mount_the_platform_once_and_the_checkpoints_read_only(tmp_path, monkeypatch):
    home, elsewhere, texts = tmp_path / "home", tmp_path / "registry", tmp_path / "texts"
    monkeypatch.setenv("AWQ_RELEASE_HOME", str(home))
    monkeypatch.setenv("AWQ_RELEASE_REGISTRY", str(elsewhere))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    monkeypatch.setenv("AWQ_RELEASE_DOCKER_VOLUMES", f"{texts}:{texts / 'tasks'}")
    monkeypatch.delenv("AWQ_RELEASE_DATABASE_URL", raising=False)
    mounts = {host: (spec["bind"], spec["mode"]) for host, spec in containers.volumes().items()}
    assert mounts == {
        str(home): (str(home), "rw"),  # work/, policy.yaml, lineage.db and the Dagster instance inside
        str(elsewhere): (str(elsewhere), "rw"),
        str(home / "checkpoints"): (str(home / "checkpoints"), "ro"),  # over the home's own mount
        str(texts): (str(texts), "ro"),
    }


def test_step_containers_get_the_platform_settings_and_the_machine_name(monkeypatch):
    monkeypatch.setenv("AWQ_RELEASE_HOME", "/srv/platform")
    monkeypatch.setenv("DAGSTER_HOME", "/srv/platform/dagster_home")
    monkeypatch.setenv("AWQ_RELEASE_HEARTBEAT_S", "3")
    monkeypatch.delenv("AWQ_RELEASE_CHECKPOINTS", raising=False)
    forwarded = containers.forwarded_environment()
    # resolved here, where the image's own defaults would otherwise apply inside
    assert {"AWQ_RELEASE_HOME=/srv/platform", "AWQ_RELEASE_CHECKPOINTS=/srv/platform/checkpoints"} <= set(forwarded)
    assert {"DAGSTER_HOME", "AWQ_RELEASE_HEARTBEAT_S"} <= set(forwarded)  # by name: this process's values
    assert f"AWQ_RELEASE_HOST={socket.gethostname()}" in forwarded and "AWQ_RELEASE_HOME" not in forwarded
    assert containers.gpu_requests() == []
    monkeypatch.setenv("AWQ_RELEASE_DOCKER_GPUS", "all")
    assert containers.gpu_requests() == [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]


def test_an_unreachable_docker_engine_is_one_clear_error_before_anything_is_written(tmp_path, monkeypatch, capsys):
    from orchestrator.cli.main import main

    monkeypatch.setenv("AWQ_RELEASE_EXECUTOR", "docker")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    monkeypatch.setenv("AWQ_RELEASE_HOME", str(tmp_path / "home"))
    assert main(["run", "--no-demo"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: AWQ_RELEASE_EXECUTOR=docker: the Docker engine is not reachable")
        and "Traceback" not in err
    )
    assert not (tmp_path / "home").exists()
