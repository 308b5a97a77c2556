"""The console scripts as a user runs them, each in a fresh process (torch imported anew: seconds
apiece, which is why they are here and not in the unit tier): `awq-release quantize --json`, the same
quantization in two processes making the same bytes, and the GPU check on a host without one."""

import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from orchestrator.pipeline.assets import output_hash
from tests.conftest import CLI, quantize_args


def test_cli_quantizes_and_prints_json(tmp_path, tiny_llama, calib_file):
    args = [CLI, *quantize_args(tiny_llama, tmp_path / "out", [calib_file], "--json")]  # the real console script
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["out_dir"] == str(tmp_path / "out") and summary["seconds"] > 0 and summary["peak_rss_mb"] > 0
    assert Path(summary["report_path"]).is_file() and summary["config"]["calibration"] == {
        "n_samples": 4,
        "seqlen": 64,
        "fingerprint": summary["config"]["calibration"]["fingerprint"],
    }


def test_two_processes_make_the_same_bytes(tmp_path, tiny_llama, calib_file):
    """The same checkpoint, tokens and settings in two fresh processes: every tensor bit for bit, and
    the same output hash (the report's timings are not part of it)."""
    outputs = [tmp_path / "first", tmp_path / "second"]
    for out in outputs:
        result = subprocess.run([CLI, *quantize_args(tiny_llama, out, [calib_file])], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    shards = sorted(p.name for p in outputs[0].glob("*.safetensors"))
    assert shards and shards == sorted(p.name for p in outputs[1].glob("*.safetensors"))
    for name in shards:
        first, second = (load_file(out / name) for out in outputs)
        assert first.keys() == second.keys()
        assert all(first[k].dtype == second[k].dtype and first[k].equal(second[k]) for k in first), name
    assert output_hash(outputs[0]) == output_hash(outputs[1])


def test_gpu_check_on_a_host_without_cuda(tmp_path):
    """bench.gpu says what it would measure, then refuses with one error line and exit 2, writing nothing."""
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "bench.gpu", "--assets", str(tmp_path), "--out", str(tmp_path / "gpu.json")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path(__file__).parents[2])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no CUDA device: this torch sees no GPU. Run the check on a GPU host."
    ]
    assert "quantizer: Llama-3-8B shape, first 4 of 32 blocks, 128 x 512" in result.stdout
    assert list(tmp_path.iterdir()) == []
