"""awq_gemm: one entry point, Triton on CUDA (or under TRITON_INTERPRET=1), the torch reference elsewhere."""

import os

from torch import Tensor

from kernels.reference import awq_gemm_reference


def uses_triton(x: Tensor) -> bool:
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def awq_gemm(
    x: Tensor, qweight: Tensor, qzeros: Tensor, scales: Tensor, group_size: int, bias: Tensor | None = None
) -> Tensor:
    """y = x @ dequant(W) (+ bias) for x (..., K) fp16/bf16 and an AutoAWQ GEMM-packed W (K, N); returns x's dtype."""
    if uses_triton(x):
        from kernels.triton_awq import awq_gemm_triton  # imported lazily: Triton is only needed on this path

        return awq_gemm_triton(x, qweight, qzeros, scales, group_size, bias)
    return awq_gemm_reference(x, qweight, qzeros, scales, group_size, bias)
