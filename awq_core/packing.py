"""Pack group-quantized integers into the AutoAWQ GEMM layout (read back by kernels.reference)."""

import torch
from torch import Tensor

from kernels.reference import AWQ_PACK_ORDER


def pack_awq_int4(values: Tensor) -> Tensor:
    """uint8 [R, C] in 0..15 -> int32 [R, C // 8]."""
    rows, cols = values.shape
    runs = values.to(torch.int32).reshape(rows, cols // 8, 8)  # (R, C // 8, 8)
    packed = torch.zeros(rows, cols // 8, dtype=torch.int32, device=values.device)
    for nibble, col in enumerate(AWQ_PACK_ORDER):
        packed |= runs[:, :, col] << (4 * nibble)
    return packed


def pack_awq(q: Tensor, scales: Tensor, zeros: Tensor) -> dict[str, Tensor]:
    """q uint8 [out, in], scales fp16 and zeros uint8 [out, in/g] -> the three AWQ tensors of a linear."""
    return {
        "qweight": pack_awq_int4(q.t().contiguous()),  # (in, out // 8) int32
        "qzeros": pack_awq_int4(zeros.t().contiguous()),  # (in // g, out // 8) int32
        "scales": scales.t().contiguous().half(),  # (in // g, out) fp16
    }
