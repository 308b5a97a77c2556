"""AWQLinear: a linear layer stored in the AutoAWQ GEMM layout, computed by kernels.awq_gemm."""

import torch
from torch import Tensor, nn

from kernels.gemm import awq_gemm


class AWQLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, group_size: int, bias: bool = False, dtype: torch.dtype = torch.float16, device=None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        n_groups = in_features // group_size
        self.register_buffer("qweight", torch.empty(in_features, out_features // 8, dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.empty(n_groups, out_features // 8, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.empty(n_groups, out_features, dtype=torch.float16, device=device))
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_packed(cls, qweight: Tensor, qzeros: Tensor, scales: Tensor, bias: Tensor | None = None) -> "AWQLinear":
        in_features, out_features = qweight.shape[0], scales.shape[1]
        layer = cls(in_features, out_features, in_features // scales.shape[0], bias is not None, device="meta")
        layer.qweight, layer.qzeros, layer.scales, layer.bias = qweight, qzeros, scales, bias
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return awq_gemm(x, self.qweight, self.qzeros, self.scales, self.group_size, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, bias={self.bias is not None}"
