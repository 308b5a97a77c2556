"""Torch reference for the AutoAWQ GEMM layout: unpack, dequantize, matmul. What runs on CPU.

Layout (what `awq_core` writes and vLLM reads with quantization="awq"):
  qweight int32 [K, N // 8]   eight 4-bit values along N per int32
  qzeros  int32 [K // g, N // 8]   same packing
  scales  fp16  [K // g, N]
  w[k, n] = (q[k, n] - z[k // g, n]) * s[k // g, n]
Within each int32, nibble i holds column AWQ_PACK_ORDER[i] of its run of eight: the one spelling
of that order, which the packer (awq_core.packing) and the Triton kernel read from here.
"""

import torch
from torch import Tensor

AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_NIBBLE_OF_COLUMN = tuple(AWQ_PACK_ORDER.index(column) for column in range(8))  # (0, 4, 1, 5, 2, 6, 3, 7)


def unpack_int4(packed: Tensor, order: tuple[int, ...] = AWQ_PACK_ORDER) -> Tensor:
    """int32 [R, C // 8] -> int32 [R, C] with values in 0..15; nibble i holds column order[i] of each run."""
    rows, packed_cols = packed.shape
    nibble_of_column = [order.index(column) for column in range(8)]  # AWQ: AWQ_NIBBLE_OF_COLUMN
    shifts = torch.tensor(nibble_of_column, dtype=torch.int32, device=packed.device) * 4
    values = (packed[:, :, None] >> shifts) & 0xF  # (R, C // 8, 8)
    return values.reshape(rows, packed_cols * 8)


def dequantize_awq(qweight: Tensor, qzeros: Tensor, scales: Tensor, group_size: int) -> Tensor:
    """Packed layout -> fp32 weight [K, N] (input features first, as the GEMM reads it)."""
    K, N = qweight.shape[0], scales.shape[1]
    q = unpack_int4(qweight).float().reshape(K // group_size, group_size, N)
    zeros = unpack_int4(qzeros).float()  # (K // g, N)
    w = (q - zeros[:, None, :]) * scales.float()[:, None, :]
    return w.reshape(K, N)


def awq_gemm_reference(
    x: Tensor, qweight: Tensor, qzeros: Tensor, scales: Tensor, group_size: int, bias: Tensor | None = None
) -> Tensor:
    """y = x @ dequant(W) (+ bias), in x's dtype; x may have any leading dimensions."""
    w = dequantize_awq(qweight, qzeros, scales, group_size).to(x.dtype)
    y = x @ w
    return y if bias is None else y + bias.to(x.dtype)
