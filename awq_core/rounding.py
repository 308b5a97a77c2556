"""Better integers once AWQ's scales and clipping ranges are chosen, still in static groups.

Both steps minimise the error of the layer's output on the calibration inputs, through the
inputs' second moments: `gram_blocks` for one group at a time, `hessian` across the whole row.
- refine_range: each group's scale and integer zero point fitted by weighted least squares to
  its weights, given its integers (activation-weighted, as llama.cpp's and llm-compressor's
  importance-weighted range searches), alternated with rounding.
- gptq_round: the integers chosen column by column with the later columns corrected for the
  rounding error so far (GPTQ, with the groups' parameters fixed beforehand: GPTQModel's static
  groups, so no g_idx and the checkpoint loads as before).
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from awq_core.quant import grouped, round_to, round_trip
from awq_core.search import group_error


def hessian(x: Tensor) -> Tensor:
    """x (T, in) -> (in, in) fp32 mean x x^T, multiplied in x's dtype: the compute dtype, bf16 only
    where the hardware multiplies it natively (faster than fp32 there, and close to it)."""
    return (x.t() @ x).float() / x.shape[0]


def gram_blocks(x: Tensor, group_size: int) -> Tensor:
    """x (T, in) -> (G, g, g) fp32: each group's block of the hessian, without the rest."""
    xg = x.reshape(x.shape[0], -1, group_size).transpose(0, 1)  # (G, T, g)
    return torch.bmm(xg.transpose(1, 2), xg).float() / x.shape[0]


def blocks_of(h: Tensor, group_size: int) -> Tensor:
    """The diagonal (G, g, g) blocks of a full (in, in) hessian."""
    n = h.shape[0] // group_size
    return h.reshape(n, group_size, n, group_size).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


@dataclass
class InputMoments:
    """Mean x x^T over every calibration token a group of linears reads: the whole (in, in) hessian
    where GPTQ needs it, else only its diagonal (G, g, g) blocks (all the range searches need)."""

    group_size: int
    full: bool
    mean: Tensor | None = None
    tokens: int = 0
    cross: Tensor | None = None  # (in, in) mean x_original x^T, where the original model's input is known

    def add(self, x: Tensor, original: Tensor | None = None) -> None:
        """Fold in a chunk of inputs x (..., in), and what the original model's linear read at the
        same tokens."""
        x = x.reshape(-1, x.shape[-1])
        moments = hessian(x) if self.full else gram_blocks(x, self.group_size)
        self.tokens += x.shape[0]
        share = x.shape[0] / self.tokens
        self.mean = moments if self.mean is None else self.mean + (moments - self.mean) * share
        if original is not None:
            cross = (original.reshape(-1, x.shape[-1]).t() @ x).float() / x.shape[0]
            self.cross = cross if self.cross is None else self.cross + (cross - self.cross) * share

    def scaled(self, scales: Tensor) -> "InputMoments":
        """The moments of x / scales: the input once AWQ's scales are folded in. scales (in,)."""
        inv = 1 / scales.float()
        outer = (
            inv[:, None] * inv[None]
            if self.full
            else (inv.reshape(-1, self.group_size, 1) * inv.reshape(-1, 1, self.group_size))
        )
        cross = None if self.cross is None else self.cross * outer
        return InputMoments(self.group_size, self.full, self.mean * outer, self.tokens, cross)

    @property
    def blocks(self) -> Tensor:
        return blocks_of(self.mean, self.group_size) if self.full else self.mean


def _least_squares(wg: Tensor, qg: Tensor, gram: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """For fixed integers qg: the scale a and integer zero z minimising the error of a (q - z).

    wg, qg (o, G, g); gram (G, g, g). The unconstrained fit a q + b solves a 2 x 2 system per group;
    z = -b / a rounded, then a refitted for that z. Returns fp16-exact scales and zeros (o, G).
    """
    w, q = wg.transpose(0, 1), qg.transpose(0, 1)  # (G, o, g)
    h1 = gram.sum(-1)[:, None]  # (G, 1, g): H 1
    hq = torch.bmm(q, gram)  # (G, o, g): (H q)^T, H symmetric
    qhq, qh1, one_h_one = (hq * q).sum(-1), (h1 * q).sum(-1), h1.sum(-1)
    qhw, one_hw = (hq * w).sum(-1), (h1 * w).sum(-1)
    det = qhq * one_h_one - qh1 * qh1
    a = (qhw * one_h_one - one_hw * qh1) / det
    b = (qhq * one_hw - qh1 * qhw) / det
    zeros = (-torch.round(b / a)).clamp(0, 2**bits - 1)
    u = q - zeros[..., None]
    hu = torch.bmm(u, gram)
    scales = (hu * w).sum(-1) / (hu * u).sum(-1)
    return scales.t().half().float(), zeros.t()


@torch.no_grad()
def refine_range(
    w: Tensor, gram: Tensor, scales: Tensor, zeros: Tensor, group_size: int, bits: int = 4, rounds: int = 3
) -> tuple[Tensor, Tensor]:
    """Scales and zeros [out, in/g] refitted to w [out, in] for output error; a group keeps its
    parameters wherever a refit does not lower its error, so the result is never worse."""
    wg = grouped(w, group_size)
    best_err = group_error(wg, round_trip(wg, scales, zeros, bits), gram)
    for _ in range(rounds):
        fit_scales, fit_zeros = _least_squares(wg, round_to(wg, scales, zeros, bits), gram, bits)
        usable = torch.isfinite(fit_scales) & (fit_scales > 0)
        fit_scales = torch.where(usable, fit_scales, scales)
        err = group_error(wg, round_trip(wg, fit_scales, fit_zeros, bits), gram)
        better = usable & (err < best_err)
        if not better.any():
            break
        best_err = torch.where(better, err, best_err)
        scales, zeros = torch.where(better, fit_scales, scales), torch.where(better, fit_zeros, zeros)
    return scales, zeros


def toward_original(w: Tensor, moments: InputMoments, damp: float) -> Tensor:
    """The weights w (out, in) that, reading the quantized model's inputs x, best give what w gave
    reading the original model's: min |w x_original - w' x|^2 + damp mean(diag H) |w' - w|^2, so
    each layer also makes up for what the blocks before it lost (GPTAQ's asymmetric calibration),
    held to w as strongly as GPTQ's damping holds its updates."""
    h = moments.mean
    ridge = torch.eye(h.shape[0], device=h.device) * damp * h.diagonal().mean()
    rhs = (moments.cross + ridge).t() @ w.float().t()  # (in, out)
    return torch.linalg.solve(h + ridge, rhs).t()


def _inverse_cholesky(h: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor of H^-1, damped by `damp` of H's mean diagonal (more if H is singular)."""
    h = h.clone()
    dead = h.diagonal() == 0  # inputs that are always zero: any weight there is free
    h[dead, dead] = 1
    mean_diag = h.diagonal().mean()
    for attempt in range(4):
        damped = h + torch.eye(h.shape[0], device=h.device) * damp * 10**attempt * mean_diag
        factor, info = torch.linalg.cholesky_ex(damped)
        if info == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True)
    raise torch.linalg.LinAlgError("the calibration inputs' hessian is not positive definite even damped 1000x")


@torch.no_grad()
def gptq_round(
    w: Tensor,
    h: Tensor,
    scales: Tensor,
    zeros: Tensor,
    group_size: int,
    bits: int = 4,
    damp: float = 0.01,
    act_order: bool = False,
    block: int = 128,
) -> Tensor:
    """Integers (as floats) [out, in/g, g] for w [out, in] under fixed group parameters [out, in/g],
    each input column's rounding error compensated on the columns after it through h (in, in).

    act_order: columns with the largest inputs (diagonal of h) first, as GPTQ's act-order; the
    groups keep their parameters and their place, so the checkpoint needs no g_idx either way.
    Works on the transpose, one contiguous row per input column; `block` rows at a time get the
    compensation of the rows before them at once (GPTQ's lazy batch updates).
    """
    in_features = w.shape[1]
    order = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(in_features, device=w.device)
    weights = w.float().t()[order].contiguous()  # (in, out) in processing order
    weights[h.diagonal()[order] == 0] = 0
    inv = _inverse_cholesky(h[order][:, order], damp)
    row_scales = scales.t().repeat_interleave(group_size, dim=0)[order]  # (in, out)
    row_zeros = zeros.t().repeat_interleave(group_size, dim=0)[order]
    q = torch.empty_like(weights)
    for start in range(0, in_features, block):
        end = min(start + block, in_features)
        errors = torch.empty(end - start, weights.shape[1], device=w.device)  # (b, out)
        for i in range(start, end):
            q[i] = torch.clamp(torch.round(weights[i] / row_scales[i]) + row_zeros[i], 0, 2**bits - 1)
            errors[i - start] = (weights[i] - (q[i] - row_zeros[i]) * row_scales[i]) / inv[i, i]
            weights[i + 1 : end].addr_(inv[i, i + 1 : end], errors[i - start], alpha=-1)
        weights[end:] -= inv[start:end, end:].t() @ errors
    in_place = torch.empty_like(q)
    in_place[order] = q
    return grouped(in_place.t(), group_size)
