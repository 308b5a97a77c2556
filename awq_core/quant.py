"""Group-wise integer quantization of a linear weight [out, in], groups along the input dimension.

Scales are rounded to fp16 before the integers are computed, so the fake-quantized weight used
by the search is bit for bit what the packed checkpoint dequantizes to.
"""

import torch
from torch import Tensor


def quantize_groups(
    w: Tensor, group_size: int, zero_point: bool = True, bits: int = 4
) -> tuple[Tensor, Tensor, Tensor]:
    """w [out, in] -> q uint8 [out, in], scales fp16 [out, in/g], zeros uint8 [out, in/g]."""
    out_features, in_features = w.shape
    max_int = 2**bits - 1
    wg = w.float().reshape(out_features, in_features // group_size, group_size)  # (out, in/g, g)
    if zero_point:
        w_max, w_min = wg.amax(dim=-1), wg.amin(dim=-1)
        scales = ((w_max - w_min).clamp(min=1e-5) / max_int).half().float()
        zeros = (-torch.round(w_min / scales)).clamp(0, max_int)
    else:
        scales = (wg.abs().amax(dim=-1).clamp(min=1e-5) / (2 ** (bits - 1) - 1)).half().float()
        zeros = torch.full_like(scales, 2 ** (bits - 1))
    q = (torch.round(wg / scales[..., None]) + zeros[..., None]).clamp(0, max_int)
    return q.reshape(out_features, in_features).to(torch.uint8), scales.half(), zeros.to(torch.uint8)


def dequantize_groups(q: Tensor, scales: Tensor, zeros: Tensor, group_size: int) -> Tensor:
    """Inverse of quantize_groups: q [out, in], scales and zeros [out, in/g] -> fp32 [out, in]."""
    out_features, in_features = q.shape
    qg = q.float().reshape(out_features, in_features // group_size, group_size)
    w = (qg - zeros.float()[..., None]) * scales.float()[..., None]
    return w.reshape(out_features, in_features)


def fake_quantize(w: Tensor, group_size: int, zero_point: bool = True, bits: int = 4) -> Tensor:
    """Quantize and dequantize in one step, in w's dtype: what the model computes after packing."""
    return dequantize_groups(*quantize_groups(w, group_size, zero_point, bits), group_size).to(w.dtype)
