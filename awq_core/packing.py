"""Pack group-quantized integers into a checkpoint layout, and unpack them again.

Both layouts a release can be written in hold the same numbers for a linear [out, in]: values q in
0..15, fp16 scales s and integer zero points z per group of g input channels, w = (q - z) * s.
They differ only in where the integers go:

  awq (AutoAWQ GEMM, vLLM quantization="awq"; read back by kernels.reference)
    qweight            int32 [in, out // 8]       nibble i holds column AWQ_PACK_ORDER[i] of its run of 8
    qzeros             int32 [in // g, out // 8]  the same packing
    scales             fp16  [in // g, out]
  compressed-tensors (pack-quantized, what llm-compressor writes; vLLM and transformers read it)
    weight_packed      int32 [out, in // 8]       nibble i holds column i of its run of 8
    weight_zero_point  int32 [out // 8, in // g]  packed along the output dimension the same way
    weight_scale       fp16  [out, in // g]
    weight_shape       int64 [2]                  (out, in)
  compressed-tensors stores the signed values q - 8 and z - 8 offset by 8: the very nibbles above.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.reference import AWQ_PACK_ORDER, unpack_int4

SEQUENTIAL_ORDER = tuple(range(8))


def pack_int4(values: Tensor, order: tuple[int, ...] = AWQ_PACK_ORDER) -> Tensor:
    """uint8 [R, C] in 0..15 -> int32 [R, C // 8]; nibble i holds column order[i] of each run of eight."""
    rows, cols = values.shape
    runs = values.to(torch.int32).reshape(rows, cols // 8, 8)  # (R, C // 8, 8)
    packed = torch.zeros(rows, cols // 8, dtype=torch.int32, device=values.device)
    for nibble, col in enumerate(order):
        packed |= runs[:, :, col] << (4 * nibble)
    return packed


@dataclass(frozen=True)
class Groups:
    """One linear's quantized numbers, layout-free."""

    q: Tensor  # uint8 [out, in] in 0..15
    scales: Tensor  # fp16 [out, in // g]
    zeros: Tensor  # uint8 [out, in // g]


def pack_awq(q: Tensor, scales: Tensor, zeros: Tensor) -> dict[str, Tensor]:
    """The three AutoAWQ GEMM tensors of a linear."""
    return {
        "qweight": pack_int4(q.t().contiguous()),  # (in, out // 8) int32
        "qzeros": pack_int4(zeros.t().contiguous()),  # (in // g, out // 8) int32
        "scales": scales.t().contiguous().half(),  # (in // g, out) fp16
    }


def unpack_awq(tensors: dict[str, Tensor]) -> Groups:
    return Groups(
        unpack_int4(tensors["qweight"]).t().to(torch.uint8).contiguous(),  # (out, in)
        tensors["scales"].t().contiguous(),  # (out, in // g)
        unpack_int4(tensors["qzeros"]).t().to(torch.uint8).contiguous(),  # (out, in // g)
    )


def pack_compressed_tensors(q: Tensor, scales: Tensor, zeros: Tensor) -> dict[str, Tensor]:
    """The four compressed-tensors pack-quantized tensors of a linear."""
    return {
        "weight_packed": pack_int4(q, SEQUENTIAL_ORDER),  # (out, in // 8) int32
        # packed along the output dimension: (in // g, out // 8) transposed to (out // 8, in // g)
        "weight_zero_point": pack_int4(zeros.t().contiguous(), SEQUENTIAL_ORDER).t().contiguous(),
        "weight_scale": scales.contiguous().half(),  # (out, in // g) fp16
        "weight_shape": torch.tensor(q.shape, dtype=torch.int64),  # (2,)
    }


def unpack_compressed_tensors(tensors: dict[str, Tensor]) -> Groups:
    zero_point = tensors["weight_zero_point"].t().contiguous()  # (in // g, out // 8)
    return Groups(
        unpack_int4(tensors["weight_packed"], SEQUENTIAL_ORDER).to(torch.uint8),  # (out, in)
        tensors["weight_scale"],  # (out, in // g)
        unpack_int4(zero_point, SEQUENTIAL_ORDER).t().to(torch.uint8).contiguous(),  # (out, in // g)
    )


@dataclass(frozen=True)
class Layout:
    suffixes: tuple[str, ...]  # a linear NAME is stored as NAME.SUFFIX for each, in place of NAME.weight
    pack: Callable[[Tensor, Tensor, Tensor], dict[str, Tensor]]  # (q, scales, zeros) -> suffix -> tensor
    unpack: Callable[[dict[str, Tensor]], Groups]  # suffix -> tensor, as stored


LAYOUTS: dict[str, Layout] = {
    "awq": Layout(("qweight", "qzeros", "scales"), pack_awq, unpack_awq),
    "compressed-tensors": Layout(
        ("weight_packed", "weight_zero_point", "weight_scale", "weight_shape"),
        pack_compressed_tensors,
        unpack_compressed_tensors,
    ),
}
