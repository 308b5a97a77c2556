"""Bad input gets a clear error and writes nothing."""

import contextlib
import io
import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from orchestrator.cli.main import main
from tests.conftest import make_tiny_model, quantize_args


def run_quantize(model_dir: Path, out_dir: Path, calib: list[Path], *extra: str) -> subprocess.CompletedProcess:
    """`awq-release quantize ...` through the command's own main(), in this process: the same exit
    status and messages as the console script, without paying its start-up (torch's import) per case.
    An exception that escapes main() fails the test, as a traceback would."""
    args = quantize_args(model_dir, out_dir, calib, *extra)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(args)
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def assert_refused(result: subprocess.CompletedProcess, out_dir: Path, *phrases: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    assert not out_dir.exists() and not (out_dir.parent / f".{out_dir.name}.partial").exists()


@pytest.fixture
def model_copy(tmp_path, tiny_llama) -> Path:
    return Path(shutil.copytree(tiny_llama, tmp_path / "model"))


def test_group_size_that_does_not_divide_a_layer(tmp_path, tokenizer_dir, calib_file):
    model_dir = make_tiny_model(tmp_path / "model", tokenizer_dir, hidden=96)
    result = run_quantize(model_dir, tmp_path / "out", [calib_file], "--group-size", "64")
    assert_refused(result, tmp_path / "out", "group_size=64 does not divide", "96 input features")


def test_unknown_architecture(tmp_path, model_copy, calib_file):
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps(config | {"architectures": ["GPT2LMHeadModel"]}))
    assert_refused(
        run_quantize(model_copy, tmp_path / "out", [calib_file]),
        tmp_path / "out",
        "GPT2LMHeadModel",
        "Supported: Gemma3ForCausalLM, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM",
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


# Hostile folders and files: nothing enters an output that the checkpoint's owner did not put there.


@pytest.mark.parametrize("name", ["notes.txt", "tokenizer.json"])
def test_links_that_leave_the_folder_are_refused(tmp_path, model_copy, calib_file, name):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    (model_copy / name).unlink(missing_ok=True)
    (model_copy / name).symlink_to(secret)
    assert_refused(
        run_quantize(model_copy, tmp_path / "out", [calib_file]), tmp_path / "out", f"{name} in ", "outside the"
    )


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json", "generation_config.json"])
def test_custom_code_named_by_any_config_is_refused(tmp_path, model_copy, calib_file, config_file):
    path = model_copy / config_file
    config = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps(config | {"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}))
    result = run_quantize(model_copy, tmp_path / "out", [calib_file])
    assert_refused(result, tmp_path / "out", f"{config_file} names custom code", "auto_map")


def test_python_files_in_a_checkpoint_are_refused(tmp_path, model_copy, calib_file):
    (model_copy / "sub").mkdir()
    (model_copy / "sub" / "evil.py").write_text("import os\nos.system('touch /tmp/pwned')\n")
    result = run_quantize(model_copy, tmp_path / "out", [calib_file])
    assert_refused(result, tmp_path / "out", "holds Python code (sub/evil.py)")


def test_only_allow_listed_files_travel_into_the_output(tmp_path, model_copy, calib_file):
    (model_copy / "notes.txt").write_text("private notes")
    (model_copy / "LICENSE").write_text("Apache-2.0")
    (model_copy / "README.md").write_text("# the team's card")
    inner = model_copy / "real_generation_config.json"
    inner.write_text('{"max_new_tokens": 8}')
    (model_copy / "generation_config.json").unlink(missing_ok=True)
    (model_copy / "generation_config.json").symlink_to(inner.name)  # a link inside the folder: its content travels
    result = run_quantize(model_copy, tmp_path / "out", [calib_file])
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {"LICENSE", "README.md", "tokenizer.json", "generation_config.json", "config.json"} <= names
    assert not names & {"notes.txt", "real_generation_config.json"}
    assert not any(p.is_symlink() for p in out.iterdir())
    assert (out / "generation_config.json").read_text() == '{"max_new_tokens": 8}'


def test_calibration_text_that_is_not_utf8(tmp_path, tiny_llama, calib_file):
    latin1 = tmp_path / "domain.txt"
    latin1.write_bytes(calib_file.read_bytes()[:2000] + "café Zürich".encode("latin-1"))
    assert_refused(
        run_quantize(tiny_llama, tmp_path / "out", [latin1]), tmp_path / "out", f"{latin1} is not UTF-8", "iconv"
    )


def test_safetensors_header_whose_shapes_do_not_match_its_data(tmp_path, model_copy, calib_file):
    path = model_copy / "model.safetensors"
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    name = "model.layers.0.mlp.up_proj.weight"
    rows, cols = header[name]["shape"]
    header[name]["shape"] = [rows * 2, cols]  # twice the elements its byte range holds
    text = json.dumps(header).encode()  # offsets count from the data section: they stay valid
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + header_len :])
    assert_refused(
        run_quantize(model_copy, tmp_path / "out", [calib_file]),
        tmp_path / "out",
        f"tensor {name!r} is",
        "but the header gives it",
    )


def test_quantize_flags_come_from_the_config_fields():
    """Every QuantConfig field has its flag, with the field's default; flags set what they name."""
    from awq_core import QuantConfig
    from orchestrator.cli.main import _config, build_parser

    parser = build_parser()
    base = ["quantize", "in", "out", "--calib", "a.txt"]
    assert _config(parser.parse_args(base)) == QuantConfig()
    args = parser.parse_args(
        [*base, "--no-zero-point", "--gptq", "--bits", "3", "--clip", "none", "--gptq-damp", "0.1"]
    )
    assert _config(args) == QuantConfig(zero_point=False, gptq=True, bits=3, clip="none", gptq_damp=0.1)
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--clip", "sideways"])  # choices from the field's Literal
