"""Group-wise integer quantization of a linear weight [out, in], groups along the input dimension.

A group's parameters are a scale and an integer zero point, taken from the range [lo, hi] it
covers; weights outside the range clamp to its ends. Scales are rounded to fp16 before the
integers are computed, so the fake-quantized weight used by every search is bit for bit what the
packed checkpoint dequantizes to.
"""

import torch
from torch import Tensor


def grouped(w: Tensor, group_size: int) -> Tensor:
    """w [out, in] -> fp32 [out, in/g, g]."""
    out_features, in_features = w.shape
    return w.float().reshape(out_features, in_features // group_size, group_size)


def range_params(lo: Tensor, hi: Tensor, zero_point: bool = True, bits: int = 4) -> tuple[Tensor, Tensor]:
    """The (fp16-exact fp32 scales, float zeros) of groups covering [lo, hi], both [out, in/g].

    Asymmetric: 2^bits - 1 steps span the range and the zero is an integer. Symmetric: the larger
    end is covered by 2^(bits-1) - 1 steps around a constant zero of 2^(bits-1).
    """
    if zero_point:
        scales = ((hi - lo).clamp(min=1e-5) / (2**bits - 1)).half().float()
        return scales, (-torch.round(lo / scales)).clamp(0, 2**bits - 1)
    scales = (torch.maximum(hi.abs(), lo.abs()).clamp(min=1e-5) / (2 ** (bits - 1) - 1)).half().float()
    return scales, torch.full_like(scales, 2 ** (bits - 1))


def round_to(wg: Tensor, scales: Tensor, zeros: Tensor, bits: int = 4) -> Tensor:
    """Integers (as floats) of wg [..., g] under the groups' scales and zeros [...]."""
    return (torch.round(wg / scales[..., None]) + zeros[..., None]).clamp(0, 2**bits - 1)


def quantize_groups(
    w: Tensor, group_size: int, zero_point: bool = True, bits: int = 4
) -> tuple[Tensor, Tensor, Tensor]:
    """Round to nearest over each group's own range: w [out, in] -> q uint8 [out, in], scales fp16
    [out, in/g], zeros uint8 [out, in/g]."""
    wg = grouped(w, group_size)
    scales, zeros = range_params(wg.amin(dim=-1), wg.amax(dim=-1), zero_point, bits)
    return as_stored(round_to(wg, scales, zeros, bits), scales, zeros)


def as_stored(qg: Tensor, scales: Tensor, zeros: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Grouped float integers [out, in/g, g] and their parameters in the dtypes the layouts pack."""
    return qg.flatten(1).to(torch.uint8), scales.half(), zeros.to(torch.uint8)


def dequantize_grouped(qg: Tensor, scales: Tensor, zeros: Tensor) -> Tensor:
    """Integers [out, in/g, g] under their groups' scales and zeros [out, in/g] -> fp32 weights."""
    return (qg.float() - zeros.float()[..., None]) * scales.float()[..., None]


def round_trip(wg: Tensor, scales: Tensor, zeros: Tensor, bits: int = 4) -> Tensor:
    """wg [out, in/g, g] rounded under given group parameters and dequantized: what a search scores."""
    return dequantize_grouped(round_to(wg, scales, zeros, bits), scales, zeros)


def dequantize_groups(q: Tensor, scales: Tensor, zeros: Tensor, group_size: int) -> Tensor:
    """Inverse of quantize_groups: q [out, in], scales and zeros [out, in/g] -> fp32 [out, in]."""
    return dequantize_grouped(grouped(q, group_size), scales, zeros).flatten(1)


def fake_quantize(w: Tensor, group_size: int, zero_point: bool = True, bits: int = 4) -> Tensor:
    """Quantize and dequantize in one step, in w's dtype: what the model computes after packing."""
    return dequantize_groups(*quantize_groups(w, group_size, zero_point, bits), group_size).to(w.dtype)
