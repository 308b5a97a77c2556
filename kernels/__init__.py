"""W4A16 matmul over the AutoAWQ GEMM layout: a Triton kernel and its torch reference."""

from kernels.gemm import awq_gemm
from kernels.linear import AWQLinear
from kernels.reference import awq_gemm_reference, dequantize_awq, unpack_int4

__all__ = ["AWQLinear", "awq_gemm", "awq_gemm_reference", "dequantize_awq", "unpack_int4"]
