"""AWQLinear: a linear layer stored in the AutoAWQ GEMM layout, computed by kernels.awq_gemm on GPUs.

On the CPU there is no fused kernel: the weight is dequantized once, on the first forward, and kept
in the activations' dtype. Unpacking on every call, as the reference does, costs far more than the
matmul when few tokens go through (bench.evaluate measures both); with the cache a quantized model
evaluates about as fast as its dense original.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.gemm import awq_gemm, uses_triton
from kernels.reference import dequantize_awq


class AWQLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        group_size: int,
        bias: bool = False,
        dtype: torch.dtype = torch.float16,
        device=None,
    ):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        n_groups = in_features // group_size
        self.register_buffer("qweight", torch.empty(in_features, out_features // 8, dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.empty(n_groups, out_features // 8, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.empty(n_groups, out_features, dtype=torch.float16, device=device))
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device) if bias else None)
        self._dense: Tensor | None = None  # (N, K) dequantized weight for the CPU path; not saved

    @classmethod
    def from_packed(cls, qweight: Tensor, qzeros: Tensor, scales: Tensor, bias: Tensor | None = None) -> "AWQLinear":
        in_features, out_features = qweight.shape[0], scales.shape[1]
        layer = cls(in_features, out_features, in_features // scales.shape[0], bias is not None, device="meta")
        layer.qweight, layer.qzeros, layer.scales, layer.bias = qweight, qzeros, scales, bias
        return layer

    def dense_weight(self, dtype: torch.dtype) -> Tensor:
        """The dequantized weight (N, K) in `dtype`, made on first use and kept."""
        if self._dense is None or self._dense.dtype != dtype or self._dense.device != self.qweight.device:
            w = dequantize_awq(self.qweight, self.qzeros, self.scales, self.group_size)  # (K, N) fp32
            self._dense = w.t().contiguous().to(dtype)
        return self._dense

    def forward(self, x: Tensor) -> Tensor:
        if uses_triton(x):
            return awq_gemm(x, self.qweight, self.qzeros, self.scales, self.group_size, self.bias)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dense_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        sizes = f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"
        return f"{sizes}, bias={self.bias is not None}"
