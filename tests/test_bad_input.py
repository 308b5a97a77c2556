"""Bad input gets a clear error and writes nothing."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import make_tiny_model

CLI = str(Path(sys.executable).parent / "awq-release")


def run_quantize(model_dir: Path, out_dir: Path, calib: list[Path], *extra: str) -> subprocess.CompletedProcess:
    args = [
        CLI,
        "quantize",
        str(model_dir),
        str(out_dir),
        "--calib",
        *map(str, calib),
        "--group-size",
        "32",
        "--n-samples",
        "4",
        "--seqlen",
        "64",
        *extra,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def assert_refused(result: subprocess.CompletedProcess, out_dir: Path, *phrases: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    assert not out_dir.exists() and not (out_dir.parent / f".{out_dir.name}.partial").exists()


@pytest.fixture
def model_copy(tmp_path, tiny_llama) -> Path:
    return Path(shutil.copytree(tiny_llama, tmp_path / "model"))


def test_cli_quantizes_and_prints_json(tmp_path, tiny_llama, calib_file):
    result = run_quantize(tiny_llama, tmp_path / "out", [calib_file], "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["out_dir"] == str(tmp_path / "out") and summary["seconds"] > 0 and summary["peak_rss_mb"] > 0
    assert Path(summary["report_path"]).is_file() and summary["config"]["calibration"] == {
        "n_samples": 4,
        "seqlen": 64,
        "fingerprint": summary["config"]["calibration"]["fingerprint"],
    }


def test_group_size_that_does_not_divide_a_layer(tmp_path, demo, calib_file):
    model_dir = make_tiny_model(tmp_path / "model", demo.model_dir, hidden=96)
    result = run_quantize(model_dir, tmp_path / "out", [calib_file], "--group-size", "64")
    assert_refused(result, tmp_path / "out", "group_size=64 does not divide", "96 input features")


def test_unknown_architecture(tmp_path, model_copy, calib_file):
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps(config | {"architectures": ["GPT2LMHeadModel"]}))
    assert_refused(
        run_quantize(model_copy, tmp_path / "out", [calib_file]),
        tmp_path / "out",
        "GPT2LMHeadModel",
        "Supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM",
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights(tmp_path, model_copy, calib_file, value):
    path = model_copy / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = value
    save_file(tensors, path, metadata={"format": "pt"})
    assert_refused(
        run_quantize(model_copy, tmp_path / "out", [calib_file]),
        tmp_path / "out",
        "model.layers.1.mlp.up_proj.weight holds 1 NaN/Inf",
    )


@pytest.mark.parametrize(
    "damage, phrase",
    [
        (lambda d: (d / "config.json").unlink(), "no config.json"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer"),
        (lambda d: (d / "model.safetensors").unlink(), "no *.safetensors weights"),
        (
            lambda d: torch.save({"w": torch.zeros(1)}, d / "pytorch_model.bin") or (d / "model.safetensors").unlink(),
            "only pickle weights (pytorch_model.bin)",
        ),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-1000]), "truncated"),
    ],
    ids=["no-config", "no-tokenizer", "no-weights", "pickle-only", "truncated"],
)
def test_broken_checkpoint_folder(tmp_path, model_copy, calib_file, damage, phrase):
    damage(model_copy)
    assert_refused(run_quantize(model_copy, tmp_path / "out", [calib_file]), tmp_path / "out", phrase)


def test_empty_and_too_short_calibration(tmp_path, tiny_llama):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert_refused(run_quantize(tiny_llama, tmp_path / "out", [empty]), tmp_path / "out", "hold no text")
    short = tmp_path / "short.txt"
    short.write_text("Only a few words of domain text.")
    assert_refused(
        run_quantize(tiny_llama, tmp_path / "out", [short]), tmp_path / "out", "4 windows of 64 need 256", "--n-samples"
    )


def test_malformed_jsonl_names_the_line(tmp_path, tiny_llama):
    bad = tmp_path / "chats.jsonl"
    bad.write_text('{"text": "fine"}\n{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n')
    assert_refused(
        run_quantize(tiny_llama, tmp_path / "out", [bad]), tmp_path / "out", "chats.jsonl:3 is not valid JSON"
    )


def test_existing_output_is_never_overwritten(tmp_path, tiny_llama, calib_file):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = run_quantize(tiny_llama, tmp_path / "out", [calib_file])
    assert result.returncode == 2 and "already exists" in result.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
