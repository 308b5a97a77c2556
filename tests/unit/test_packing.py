"""INT4 group quantization and the AutoAWQ GEMM layout, checked against the spec and bit for bit."""

import pytest
import torch

from awq_core.packing import pack_awq, pack_int4
from awq_core.quant import dequantize_groups, fake_quantize, quantize_groups
from kernels.reference import awq_gemm_reference, dequantize_awq, unpack_int4


def test_nibble_order_matches_autoawq_spec():
    # Columns 0..7 with values 0..7: the int32 holds columns in the order 0, 2, 4, 6, 1, 3, 5, 7.
    values = torch.arange(8, dtype=torch.uint8)[None]
    assert pack_int4(values).item() == 0x75316420
    # A value of 15 in the last nibble sets the sign bit: packing must still be exact.
    high = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 15]], dtype=torch.uint8)
    assert pack_int4(high).item() == (15 << 28) - (1 << 32)
    assert unpack_int4(pack_int4(high)).tolist() == high.tolist()


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("zero_point", [True, False])
def test_pack_unpack_equals_fake_quantized_bit_for_bit(group_size, zero_point):
    torch.manual_seed(group_size)
    w = torch.randn(192, 256) * torch.rand(1, 256) * 3  # (out, in), uneven channel magnitudes
    q, scales, zeros = quantize_groups(w, group_size, zero_point)
    packed = pack_awq(q, scales, zeros)
    assert packed["qweight"].shape == (256, 192 // 8) and packed["qweight"].dtype == torch.int32
    assert packed["qzeros"].shape == (256 // group_size, 192 // 8)
    assert packed["scales"].shape == (256 // group_size, 192) and packed["scales"].dtype == torch.float16
    unpacked = dequantize_awq(packed["qweight"], packed["qzeros"], packed["scales"], group_size).t()
    assert torch.equal(unpacked, fake_quantize(w, group_size, zero_point))


def test_quantization_error_is_bounded_by_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    q, scales, zeros = quantize_groups(w, 64)
    assert q.max() <= 15 and zeros.max() <= 15
    err = (dequantize_groups(q, scales, zeros, 64) - w).abs().reshape(64, 2, 64)
    assert (err <= scales.float()[..., None] * 0.5 + 1e-6).all()


@pytest.mark.parametrize("bits, levels", [(4, 16), (2, 4)])
def test_bits_limit_the_number_of_levels(bits, levels):
    w = torch.linspace(-1, 1, 128)[None]
    q, _, _ = quantize_groups(w, 128, bits=bits)
    assert q.unique().numel() == levels


def test_reference_gemm_equals_dequantize_then_matmul():
    torch.manual_seed(1)
    w = torch.randn(64, 128)
    q, scales, zeros = quantize_groups(w, 32)
    packed = pack_awq(q, scales, zeros)
    x = torch.randn(3, 5, 128)
    bias = torch.randn(64)
    y = awq_gemm_reference(x, packed["qweight"], packed["qzeros"], packed["scales"], 32, bias)
    expected = x @ dequantize_groups(q, scales, zeros, 32).t() + bias
    assert y.shape == (3, 5, 64)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
