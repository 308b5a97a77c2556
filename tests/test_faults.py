"""Real faults through the platform as `awq-release run` drives it: a process killed with SIGKILL in
the middle of quantization is retried by the next pass, which resumes at the first unfinished block
and releases exactly what a run that was never killed would have."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from awq_core import QuantConfig, quantize
from tests.conftest import make_tiny_model
from tests.fake_openai import FakeOpenAI

CLI = str(Path(sys.executable).parent / "awq-release")
ONE_PASS = "from orchestrator.main_job import run_platform; run_platform()"


def tiny_policy(calib_file: Path, tasks: Path, endpoint: str) -> dict:
    """Thresholds a random model passes: this is about faults, not quality."""
    texts = [str(calib_file)]
    return {
        "model_name": "tiny-bot",
        "calibration": {"texts": texts, "n_samples": 8, "seqlen": 128},
        "quantization": {"group_size": 64, "search_tokens": 512, "n_grid": 10, "clip_tokens": 128},
        "validation": {
            "perplexity": {"domain_texts": texts, "max_tokens": 512, "seqlen": 128, "stride": 64, "max_increase": 10},
            "tasks": {"tasks": [{"path": str(tasks)}], "max_drop": 100},
            "long_context": {
                "texts": texts,
                "lengths": [256],
                "documents": 1,
                "target_tokens": 64,
                "max_degradation": 10,
                "max_growth": 10,
                "max_retrieval_drop": 1.0,
            },
            "load": {
                "endpoint": endpoint,
                "prompt_texts": texts,
                "concurrency": [2],
                "requests_per_level": 4,
                "prompt_tokens": 32,
                "output_tokens": 8,
            },
        },
        "serving": {"max_model_len": 1024, "dtype": "bfloat16"},
    }


@pytest.fixture
def platform_home(tmp_path, demo, calib_file):
    home = tmp_path / "home"
    make_tiny_model(home / "checkpoints" / "tiny", demo.model_dir, hidden=256, layers=12)
    tasks = tmp_path / "capitals.jsonl"
    tasks.write_text("".join(line + "\n" for line in demo.tasks["world_capitals"].read_text().splitlines()[:8]))
    return home, tasks


def one_pass(home: Path) -> subprocess.Popen:
    env = os.environ | {"AWQ_RELEASE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", ONE_PASS], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_killed_quantization_is_retried_and_resumes(platform_home, calib_file):
    home, tasks = platform_home
    with FakeOpenAI() as server:
        (home / "policy.yaml").write_text(yaml.safe_dump(tiny_policy(calib_file, tasks, server.base_url)))
        work = home / "work" / "tiny"
        finished_blocks = lambda: list(work.glob(".awq-*.partial/.blocks/*.json"))  # noqa: E731

        first = one_pass(home)
        try:
            wait_for(lambda: len(finished_blocks()) >= 2 or first.poll() is not None, 600, "two quantized blocks")
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        assert first.returncode == -signal.SIGKILL, first.stdout.read().decode()[-3000:]
        assert not (home / "registry").exists()  # nothing released, nothing half-written

        second = one_pass(home)
        output = second.communicate(timeout=900)[0].decode()
        assert second.returncode == 0, output[-3000:]

    (quantized,) = work.glob("awq-*")
    report = json.loads((quantized / "quant_report.json").read_text())
    assert report["resumed_blocks"] >= 2  # picked up where the killed run stopped, not from scratch
    release = home / "registry" / "tiny-bot" / "current"
    assert json.loads((release / "manifest.json").read_text())["version"] == "v0001"

    # What a run that was never killed writes, from the same calibration tokens and settings.
    (tokens,) = work.glob("calibration-*.safetensors")
    fresh = quantize(
        home / "checkpoints" / "tiny",
        home / "fresh",
        load_file(tokens)["input_ids"],
        QuantConfig(group_size=64, search_tokens=512, n_grid=10, clip_tokens=128),
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
