"""Where work runs: the compute setting's auto choices (CPU capability mocked), forced precisions,
the quantizer on CUDA, CPU evaluation of AWQ layers, and the vLLM capability probe (mocked)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

import awq_core.compute as compute_module
import kernels.linear as linear_module
from awq_core import QuantConfig, build_calibration, quantize
from awq_core.compute import Compute, resolve
from awq_core.crosscheck import cuda_matches_cpu
from awq_release.errors import ComputeError
from deploy.capability import Capability, capability_from, vllm_awq_capability
from kernels import AWQLinear, awq_gemm_reference
from tests.conftest import FAST
from validation import load_test
from validation.settings import LoadSettings

AVX2_FLAGS = frozenset({"avx", "avx2", "fma"})
AVX512_BF16_FLAGS = AVX2_FLAGS | {"avx512f", "avx512_bf16"}


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(
    "flags, dtype",
    [(AVX2_FLAGS, torch.float32), (AVX512_BF16_FLAGS, torch.bfloat16), (AVX2_FLAGS | {"amx_bf16"}, torch.bfloat16)],
)
def test_auto_on_cpu_uses_bf16_only_where_the_cpu_multiplies_it_natively(monkeypatch, cpu_only, flags, dtype):
    monkeypatch.setattr(compute_module, "cpu_flags", lambda: flags)
    resolved = resolve(Compute())
    assert (resolved.device, resolved.dtype) == (torch.device("cpu"), dtype)
    assert resolved.describe()["dtype"] == str(dtype).removeprefix("torch.") and resolved.describe()["why"]


@pytest.mark.parametrize("bf16, dtype", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda_prefers_bf16_then_fp16(monkeypatch, bf16, dtype):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    resolved = resolve(Compute())
    assert (resolved.device.type, resolved.dtype) == ("cuda", dtype)


def test_explicit_settings_and_clear_errors(monkeypatch, cpu_only):
    monkeypatch.setattr(compute_module, "cpu_flags", lambda: AVX512_BF16_FLAGS)
    assert resolve(Compute(dtype="float32")).dtype == torch.float32  # forcing fp32 on an AVX-512 BF16 host
    with pytest.raises(ComputeError, match="choose auto, cpu, cuda or cuda:INDEX"):
        Compute(device="tpu")
    with pytest.raises(ComputeError, match="choose auto, float32, bfloat16, float16"):
        Compute(dtype="int8")
    with pytest.raises(ComputeError, match="sees no CUDA GPU"):
        resolve(Compute(device="cuda:0"))


def test_checkpoint_format_is_the_same_whatever_the_compute(tmp_path, tiny_llama, calib_file):
    calib = build_calibration(AutoTokenizer.from_pretrained(tiny_llama), [calib_file], n_samples=4, seqlen=128)
    shards = {}
    for dtype in ("float32", "bfloat16"):
        report = quantize(
            tiny_llama,
            tmp_path / dtype,
            calib,
            QuantConfig(**FAST),
            progress=False,
            compute=Compute(device="cpu", dtype=dtype),
        )
        assert report.compute["dtype"] == dtype and report.peak_gpu_mb is None
        assert json.loads((tmp_path / dtype / "quant_report.json").read_text())["compute"]["device"] == "cpu"
        shards[dtype] = {
            k: v for shard in sorted((tmp_path / dtype).glob("*.safetensors")) for k, v in load_file(shard).items()
        }
    fp32, bf16 = shards["float32"], shards["bfloat16"]
    assert fp32.keys() == bf16.keys() and all(
        fp32[k].dtype == bf16[k].dtype and fp32[k].shape == bf16[k].shape for k in fp32
    )
    assert fp32["model.layers.0.input_layernorm.weight"].dtype == torch.bfloat16  # the checkpoint's storage dtype


def test_awq_linear_on_cpu_dequantizes_once(monkeypatch):
    torch.manual_seed(0)
    K, N, g = 128, 64, 32
    layer = AWQLinear.from_packed(
        torch.randint(-(2**31), 2**31 - 1, (K, N // 8), dtype=torch.int32),
        torch.randint(-(2**31), 2**31 - 1, (K // g, N // 8), dtype=torch.int32),
        torch.rand(K // g, N, dtype=torch.float16) / 8,
        torch.randn(N),
    )
    calls = []
    real = linear_module.dequantize_awq
    monkeypatch.setattr(linear_module, "dequantize_awq", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(3, 5, K)
    first, second = layer(x), layer(x)
    assert len(calls) == 1 and torch.equal(first, second)
    expected = awq_gemm_reference(x, layer.qweight, layer.qzeros, layer.scales, g, layer.bias)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "found, runs, phrase",
    [
        ({"installed": True, "cuda": True, "platform": "CudaPlatform"}, True, "CUDA"),
        (
            {"installed": True, "cuda": False, "platform": "CpuPlatform", "cpu_w4a16": True, "isa": "AVX512"},
            True,
            "cpu_gemm_wna16",
        ),
        (
            {"installed": True, "cuda": False, "platform": "CpuPlatform", "cpu_w4a16": False, "isa": "AVX2"},
            False,
            "AVX2 build) has no 4-bit AWQ kernel",
        ),
        ({"installed": False, "detail": "No module named 'vllm'"}, False, "not installed"),
    ],
)
def test_capability_verdicts(found, runs, phrase):
    capability = capability_from(found)
    assert capability.runs_awq is runs and phrase in capability.reason
    if not runs:
        assert "load.endpoint" in capability.reason and "load.required: false" in capability.reason  # the fixes


def test_probe_of_this_host_matches_its_cpu():
    """vLLM's CPU W4A16 op exists in its AVX-512 builds only: the real probe must say so on either kind."""
    if torch.cuda.is_available():
        pytest.skip("a GPU host: vLLM's CUDA path decides")
    capability = vllm_awq_capability()
    assert capability.runs_awq is ("avx512f" in compute_module.cpu_flags()) and "cpu_gemm_wna16" in capability.reason


@pytest.mark.parametrize("required", [True, False])
def test_load_stage_where_vllm_cannot_run_awq(monkeypatch, tmp_path, tiny_llama, calib_file, required):
    """No server starts: the stage fails with the cause and the fixes, or is skipped as the policy allows."""
    cannot = Capability(False, "this host's vLLM (CpuPlatform, AVX2 build) has no 4-bit AWQ kernel: fix it")
    monkeypatch.setattr(load_test, "vllm_awq_capability", lambda: cannot)
    monkeypatch.setattr(load_test, "serve", lambda *a, **k: pytest.fail("a server was started"))
    settings = LoadSettings(
        prompt_texts=(calib_file,), requests_per_level=2, prompt_tokens=32, log_dir=tmp_path, required=required
    )
    result = load_test.run(tiny_llama, tiny_llama, settings)
    assert not result.passed and result.metrics == [] and not list(Path(tmp_path).iterdir())
    if required:
        assert result.status == "failed" and result.error == cannot.reason and result.skipped is None
    else:
        assert result.status == "skipped" and result.skipped == cannot.reason
        assert result.reasons == [f"skipped: {cannot.reason}"] and result.to_dict()["status"] == "skipped"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the quantizer's GPU path")
def test_quantizer_on_cuda_matches_cpu(tmp_path, tiny_llama, calib_file):
    """Same fp32 precision on both devices: the GPU's different summation order may flip an integer
    at a rounding boundary, so at least 98% of the packed words match and the models' logits agree
    to 1e-2 of their scale. bench.gpu runs the same comparison on the GPU machine."""
    calib = build_calibration(AutoTokenizer.from_pretrained(tiny_llama), [calib_file], n_samples=4, seqlen=128)
    figures = cuda_matches_cpu(tiny_llama, calib, tmp_path, QuantConfig(**FAST))
    assert figures["cuda_compute"]["device"].startswith("cuda") and figures["cuda_peak_gpu_mb"] > 0
    assert figures["min_equal_words"] >= 0.98
    assert figures["max_logit_difference"] <= 1e-2 * max(1.0, figures["logit_scale"])
