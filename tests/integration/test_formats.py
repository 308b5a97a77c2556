"""Both release formats from the same search: the same integers, and the same logits in our loader,
in transformers (compressed-tensors; AutoAWQ GEMM through gptqmodel) and in vLLM (tests/e2e/test_platform.py,
test_validation_demo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from awq_core import QuantConfig, build_calibration, quantize
from awq_core.architectures import LLAMA
from awq_core.compute import Compute, resolve
from awq_core.formats import format_of
from awq_core.loader import load_quantized
from awq_core.packing import LAYOUTS
from awq_core.quant import quantize_groups
from awq_release.errors import CheckpointError
from tests.conftest import FAST

FP32 = resolve(Compute(device="cpu", dtype="float32"))  # exact arithmetic: any difference is the format's
GPTQMODEL = Path(__file__).parents[2] / ".venv" / "gptqmodel"  # scripts/setup.sh installs it there


def test_compressed_tensors_layout_is_the_packages_own():
    torch.manual_seed(0)
    q, scales, zeros = quantize_groups(torch.randn(48, 256), 64)  # (out, in)
    ours = LAYOUTS["compressed-tensors"].pack(q, scales, zeros)
    signed = (q.to(torch.int16) - 8).to(torch.int8)  # compressed-tensors' values: q - 8, stored offset by 8
    assert torch.equal(ours["weight_packed"], pack_to_int32(signed, 4))
    signed_zeros = (zeros.to(torch.int16) - 8).to(torch.int8)
    assert torch.equal(unpack_from_int32(ours["weight_zero_point"], 4, torch.Size([48, 4]), packed_dim=0), signed_zeros)
    assert ours["weight_shape"].tolist() == [48, 256] and ours["weight_scale"].shape == (48, 4)


@pytest.fixture(scope="module")
def calib(tiny_llama, calib_file):
    return build_calibration(AutoTokenizer.from_pretrained(tiny_llama), [calib_file], n_samples=8, seqlen=128)


@pytest.fixture(scope="module")
def calib_ids(calib):
    """Two windows of real text in the demo tokenizer, which the tiny models share."""
    return calib[:2]


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory, tiny_llama, calib) -> dict[str, Path]:
    """Round-to-nearest, so that both runs compute the very same integers: two AWQ searches on a CPU
    can break a near tie differently (matmul rounding varies from run to run). The format is only
    the packing of what the search chose (awq_core.block), whatever the method."""
    root = tmp_path_factory.mktemp("formats")
    for fmt in LAYOUTS:
        quantize(tiny_llama, root / fmt, calib, QuantConfig(**FAST, method="rtn", format=fmt), progress=False)
    return {fmt: root / fmt for fmt in LAYOUTS}


def linear_groups(model_dir: Path, fmt: str, linear: str):
    tensors = {}
    for shard in model_dir.glob("*.safetensors"):
        tensors |= load_file(shard)
    return LAYOUTS[fmt].unpack({suffix: tensors[f"{linear}.{suffix}"] for suffix in LAYOUTS[fmt].suffixes})


def test_both_formats_hold_the_same_integers_and_logits(both_formats, calib_ids):
    for block in (0, 1):
        for name in LLAMA.linears:
            awq, ct = (linear_groups(both_formats[f], f, f"model.layers.{block}.{name}") for f in LAYOUTS)
            assert torch.equal(awq.q, ct.q) and torch.equal(awq.scales, ct.scales) and torch.equal(awq.zeros, ct.zeros)
    config = json.loads((both_formats["compressed-tensors"] / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    weights = config["config_groups"]["group_0"]["weights"]
    assert weights | {"num_bits": 4, "symmetric": False, "strategy": "group", "group_size": 32} == weights
    assert [format_of(json.loads((d / "config.json").read_text()), str(d)) for d in both_formats.values()] == [
        ("awq", 32),
        ("compressed-tensors", 32),
    ]
    with torch.no_grad():
        awq, ct = (load_quantized(both_formats[f], FP32)(calib_ids).logits for f in LAYOUTS)
    assert torch.equal(awq, ct)


def test_transformers_loads_the_compressed_tensors_release_as_our_loader_does(demo_quantized, calib_ids):
    model_dir = demo_quantized / "rtn"  # the real model, written as compressed-tensors
    with torch.no_grad():
        ours = load_quantized(model_dir, FP32)(calib_ids).logits
        theirs = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)(calib_ids).logits
    difference = (theirs - ours).abs().max().item()
    largest = ours.abs().max().item()
    print(f"compressed-tensors: transformers vs our loader, max |logit difference| {difference:.2e} of {largest:.1f}")
    assert difference < 1e-3 * largest
    assert torch.equal(theirs.argmax(-1), ours.argmax(-1))


GPTQMODEL_LOGITS = """
import sys, torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AwqConfig
model_dir, ids_path, out_path = sys.argv[1:]
# gptqmodel's torch kernel: fp16, the closest it comes to fp32 (its default CPU kernel computes in bf16)
config = AwqConfig(bits=4, backend="torch_awq")
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, quantization_config=config)
with torch.no_grad():
    save_file({"logits": model(load_file(ids_path)["ids"]).logits.contiguous()}, out_path)
"""


@pytest.mark.skipif(not GPTQMODEL.is_dir(), reason=f"gptqmodel is not installed in {GPTQMODEL} (scripts/setup.sh)")
def test_transformers_loads_the_awq_release_through_gptqmodel(demo_quantized, calib_ids, tmp_path):
    """In its own folder on PYTHONPATH, so that what vLLM and the platform import stays as it is."""
    model_dir = demo_quantized / "awq"
    save_file({"ids": calib_ids}, tmp_path / "ids.safetensors")
    env = os.environ | {"PYTHONPATH": str(GPTQMODEL)}
    command = [sys.executable, "-c", GPTQMODEL_LOGITS, str(model_dir), str(tmp_path / "ids.safetensors")]
    done = subprocess.run([*command, str(tmp_path / "out.safetensors")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = load_file(tmp_path / "out.safetensors")["logits"]
    with torch.no_grad():
        ours = load_quantized(model_dir, FP32)(calib_ids).logits
    difference = (theirs - ours).abs().max().item()
    largest = ours.abs().max().item()
    print(f"AWQ GEMM: transformers + gptqmodel vs our loader, max |logit difference| {difference:.2e} of {largest:.1f}")
    # gptqmodel computes in fp16 whatever dtype it is asked for: its logits differ from ours by that rounding.
    assert difference < 1e-2 * largest
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean() > 0.99


def test_a_foreign_quantization_is_refused_with_the_fix(both_formats):
    config = json.loads((both_formats["awq"] / "config.json").read_text())
    gptq = config | {"quantization_config": {"quant_method": "gptq", "bits": 4}}
    with pytest.raises(CheckpointError, match="is neither a 4-bit AWQ GEMM .* quantize it with `awq-release quantize`"):
        format_of(gptq, "some/folder")
