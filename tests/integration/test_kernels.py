"""The Triton W4A16 kernel, run by Triton's interpreter on CPU, against the torch reference."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # read when Triton decorates the kernel, i.e. at this import
from kernels import triton_awq  # noqa: E402

del os.environ["TRITON_INTERPRET"]  # the rest of the suite keeps the CPU reference path; tests here set it again

import pytest  # noqa: E402
import torch  # noqa: E402

from awq_core.packing import pack_awq  # noqa: E402
from awq_core.quant import quantize_groups  # noqa: E402
from kernels import AWQLinear  # noqa: E402
from kernels.reference import awq_gemm_reference  # noqa: E402


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    """The interpreter also reads the variable while a kernel runs."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


TOLERANCE = {torch.float16: 2**-9, torch.bfloat16: 2**-6}  # relative to the largest output


def packed_layer(K: int, N: int, group_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    w = torch.randn(N, K) * torch.rand(1, K)  # (out, in)
    return pack_awq(*quantize_groups(w, group_size))


def assert_matches_reference(y: torch.Tensor, x: torch.Tensor, layer: dict, group_size: int, bias) -> None:
    expected = awq_gemm_reference(x, layer["qweight"], layer["qzeros"], layer["scales"], group_size, bias)
    assert y.dtype == x.dtype and y.shape == expected.shape
    scale = expected.float().abs().max().item()
    assert (y.float() - expected.float()).abs().max().item() <= TOLERANCE[x.dtype] * scale


@pytest.mark.parametrize("M", [1, 3, 16, 33, 128, 257])
@pytest.mark.parametrize("K, N", [(128, 64), (256, 192)])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_triton_matches_reference(M, K, N, group_size):
    layer = packed_layer(K, N, group_size, seed=M)
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(M, K, dtype=dtype)
        for bias in (None, torch.randn(N, dtype=dtype)):
            y = triton_awq.awq_gemm_triton(x, layer["qweight"], layer["qzeros"], layer["scales"], group_size, bias)
            assert_matches_reference(y, x, layer, group_size, bias)


def test_leading_batch_dimensions_and_strided_input():
    layer = packed_layer(128, 64, 64)
    x = torch.randn(2, 3, 256, dtype=torch.float16)[..., ::2]  # (2, 3, 128), non-contiguous
    y = triton_awq.awq_gemm_triton(x, layer["qweight"], layer["qzeros"], layer["scales"], 64)
    assert y.shape == (2, 3, 64)
    assert_matches_reference(y, x, layer, 64, None)


def test_dispatch_and_module_pick_triton_only_when_asked(monkeypatch):
    layer = packed_layer(128, 64, 32)
    linear = AWQLinear.from_packed(layer["qweight"], layer["qzeros"], layer["scales"])
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    calls = []
    monkeypatch.setattr(triton_awq, "awq_gemm_triton", lambda *a: calls.append(a) or awq_gemm_reference(*a))
    monkeypatch.delenv("TRITON_INTERPRET")
    linear(x)
    assert calls == []  # CPU tensor, no interpreter: the reference
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    linear(x)
    assert len(calls) == 1
