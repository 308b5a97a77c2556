"""Triton W4A16 GEMM over the AutoAWQ GEMM layout: y = x @ dequant(qweight, qzeros, scales) (+ bias).

INT4 weights are read once, as the packed int32 words they are stored in, and unpacked in registers
inside the K loop; they are never written back as FP16. Each K tile lies inside one quantization
group (BLOCK_K divides group_size), so the tile's integers minus its zero points go through the dot
exactly, and the group's scales multiply the (BLOCK_M, BLOCK_N) product once, not every weight.
Three schedules, chosen by M:
  - small M (decode, M <= 16): memory-bound; 16-row tiles and split-K so that enough programs
    stream the weights, partial sums reduced in fp32 afterwards;
  - medium M (up to 256): still mostly weight traffic; taller tiles, split-K up to 4;
  - large M: compute-bound; square-ish tiles, one program per output tile.

The kernel uses core builtins only (tl.full, not tl.zeros; no tl.cdiv): the tl.standard helpers
are jitted when Triton is first imported, and the CPU interpreter cannot call them when that
happened before TRITON_INTERPRET=1 was set (as in a test session).
"""

import os
from functools import cache

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.reference import AWQ_NIBBLE_OF_COLUMN

SMALL_M, MEDIUM_M = 16, 256
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _each_word_eight_times(words, ROWS: tl.constexpr, COLS: tl.constexpr):
    """(ROWS, COLS // 8) int32 words -> (ROWS, COLS): each word in the 8 columns whose nibbles it holds."""
    twice = tl.join(words, words)  # (ROWS, COLS // 8, 2)
    four = tl.join(twice, twice)  # (ROWS, COLS // 8, 2, 2)
    return tl.reshape(tl.join(four, four), (ROWS, COLS))


# M and its bucket change with every batch: specializing on them (M == 1, M % 16) would compile each
# config again per batch size, for no faster code, since M only bounds the row mask.
@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _awq_gemm_kernel(
    x_ptr,
    qweight_ptr,
    qzeros_ptr,
    scales_ptr,
    bias_ptr,
    nibble_ptr,
    y_ptr,
    M,
    N,
    K,
    M_BUCKET,
    group_size,
    stride_xm,
    stride_xk,
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    pid, pid_k = tl.program_id(0), tl.program_id(1)
    grid_n = (N + BLOCK_N - 1) // BLOCK_N
    offs_m = (pid // grid_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid % grid_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_word = (pid % grid_n) * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)  # the int32 words of those columns
    offs_k = tl.arange(0, BLOCK_K)
    mask_m, mask_n, mask_word = offs_m < M, offs_n < N, offs_word < N // 8
    shifts = tl.load(nibble_ptr + offs_n % 8) * 4  # (BLOCK_N,): column j of a run of 8 sits in nibble_ptr[j]
    dot_dtype = tl.float32 if DOT_FP32 else x_ptr.dtype.element_ty

    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        k = k0 + offs_k
        x_offsets = offs_m[:, None] * stride_xm + k[None, :] * stride_xk  # (BM, BK)
        x = tl.load(x_ptr + x_offsets, mask=mask_m[:, None], other=0.0)
        words = tl.load(qweight_ptr + k[:, None] * (N // 8) + offs_word[None, :], mask=mask_word[None, :], other=0)
        group = k0 // group_size
        zero_words = tl.load(qzeros_ptr + group * (N // 8) + offs_word[None, :], mask=mask_word[None, :], other=0)
        scales = tl.load(scales_ptr + group * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)  # (BN,)
        q = (_each_word_eight_times(words, BLOCK_K, BLOCK_N) >> shifts[None, :]) & 0xF  # (BK, BN)
        zeros = (_each_word_eight_times(zero_words, 1, BLOCK_N) >> shifts[None, :]) & 0xF  # (1, BN)
        centred = (q - zeros).to(dot_dtype)  # integers in [-15, 15]: exact in any dtype
        acc += tl.dot(x.to(dot_dtype), centred) * scales[None, :]

    y_offsets = offs_m[:, None] * N + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + y_offsets, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:  # fp32 partial sums, one slice per K split
        tl.store(y_ptr + pid_k * M * N + y_offsets, acc, mask=mask)


def _prune(configs, named_args, **kwargs):
    """Keep configs whose K tile lies inside one quantization group."""
    group_size = named_args["group_size"]
    kept = [c for c in configs if group_size % c.kwargs["BLOCK_K"] == 0]
    return kept or configs[:1]


def _config(bm: int, bn: int, bk: int, split_k: int, warps: int, stages: int) -> triton.Config:
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split_k}, num_warps=warps, num_stages=stages
    )


if INTERPRET:  # the interpreter would "benchmark" every config on the CPU: give it one of each kind
    SMALL_CONFIGS = [_config(16, 32, 32, 2, 4, 1)]
    MEDIUM_CONFIGS = [_config(32, 32, 32, 2, 4, 1)]
    LARGE_CONFIGS = [_config(32, 32, 32, 1, 4, 1)]
else:
    SMALL_CONFIGS = [
        _config(16, bn, bk, sk, 4, 4) for bn in (32, 64, 128) for bk in (64, 128) for sk in (1, 2, 4, 8, 16)
    ]
    MEDIUM_CONFIGS = [
        _config(bm, bn, 64, sk, 4, stages)
        for bm in (32, 64)
        for bn in (64, 128)
        for sk in (1, 2, 4)
        for stages in (3, 4)
    ]
    LARGE_CONFIGS = [
        _config(bm, bn, bk, 1, warps, stages)
        for bm, bn, warps in ((64, 128, 4), (128, 128, 8), (128, 256, 8), (64, 256, 8), (128, 64, 4))
        for bk in (32, 64)
        for stages in (3, 4)
    ]

_KEY = ["M_BUCKET", "N", "K", "group_size"]


def _tuning_bench(kernel_call, quantiles):
    """Short timings for choosing a config: dozens are tried per new shape, and a config's rank
    settles long before Triton's default 125 ms of warm-up and repeats per config."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def _autotuned(configs: list[triton.Config]):
    prune = {"early_config_prune": _prune}
    return triton.autotune(configs, key=_KEY, prune_configs_by=prune, do_bench=_tuning_bench)(_awq_gemm_kernel)


_small_m_kernel = _autotuned(SMALL_CONFIGS)
_medium_m_kernel = _autotuned(MEDIUM_CONFIGS)
_large_m_kernel = _autotuned(LARGE_CONFIGS)


def schedule(M: int) -> tuple[triton.runtime.Autotuner, int]:
    """The autotuned kernel for M rows, and the most K splits its configs use."""
    if M <= SMALL_M:
        return _small_m_kernel, max(c.kwargs["SPLIT_K"] for c in SMALL_CONFIGS)
    if M <= MEDIUM_M:
        return _medium_m_kernel, max(c.kwargs["SPLIT_K"] for c in MEDIUM_CONFIGS)
    return _large_m_kernel, 1


@cache
def _nibble_table(device: torch.device) -> Tensor:
    """(8,) int32 on the device, made once: the nibble that holds each column of a run of eight."""
    return torch.tensor(AWQ_NIBBLE_OF_COLUMN, dtype=torch.int32, device=device)


def awq_gemm_triton(
    x: Tensor, qweight: Tensor, qzeros: Tensor, scales: Tensor, group_size: int, bias: Tensor | None = None
) -> Tensor:
    K, N = qweight.shape[0], scales.shape[1]
    x2 = x.reshape(-1, K)  # (M, K)
    M = x2.shape[0]
    kernel, max_split = schedule(M)
    split = max_split > 1
    # Split-K writes fp32 partials, one slice per split the chosen config uses; each slice is written whole.
    y = (
        torch.empty(max_split, M, N, device=x.device, dtype=torch.float32)
        if split
        else torch.empty(M, N, device=x.device, dtype=x.dtype)
    )
    chosen = {}

    def grid(meta):
        chosen["split_k"] = meta["SPLIT_K"]
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])

    bias_arg = bias if bias is not None else scales  # never read when HAS_BIAS is False
    kernel[grid](
        x2,
        qweight,
        qzeros,
        scales,
        bias_arg,
        _nibble_table(x.device),
        y,
        M,
        N,
        K,
        triton.next_power_of_2(M),
        group_size,
        x2.stride(0),
        x2.stride(1),
        HAS_BIAS=bias is not None and not split,  # split-K adds it after the reduction
        # Triton 3.9's interpreter computes bf16 dots wrongly (garbage, not rounding): use fp32 there.
        DOT_FP32=INTERPRET and x.dtype == torch.bfloat16,
    )
    if split:
        out = y[: chosen["split_k"]].sum(0)
        if bias is not None:
            out += bias.float()
        y = out.to(x.dtype)
    return y.reshape(*x.shape[:-1], N)
