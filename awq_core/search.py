"""The two AWQ searches: per-input-channel scales for a group of linears, and per-group clipping ranges."""

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from awq_core.config import QuantConfig
from awq_core.quant import fake_quantize, grouped, range_params, round_trip


def call_module(module: nn.Module, x: Tensor, kwargs: dict, params: dict[str, Tensor] | None = None) -> Tensor:
    """Run `module` on x, optionally with some parameters swapped in; attention returns a tuple."""
    out = functional_call(module, params, (x,), kwargs) if params else module(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def mse(a: Tensor, b: Tensor) -> float:
    return (a.float() - b.float()).pow(2).mean().item()


def weight_mean(weights: list[Tensor], group_size: int) -> Tensor:
    """Mean over output rows of |w| normalised by its group's max: how large each input channel's weights are."""
    w = torch.cat(weights).float()  # (sum out, in)
    wg = w.abs().reshape(-1, group_size)
    wg = wg / (wg.amax(dim=1, keepdim=True) + 1e-6)
    return wg.reshape(w.shape).mean(0)  # (in,)


def duo_scales(x_mean: Tensor, w_mean: Tensor, alpha: float) -> Tensor:
    s = (x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


@dataclass(frozen=True)
class ScaleResult:
    scales: Tensor  # (in,) fp32; all ones when the identity won
    alpha: float | None  # None: the identity
    loss_rtn: float  # inspected output MSE with plain round-to-nearest
    loss_awq: float  # with the chosen scales


@torch.no_grad()
def search_scales(
    inspect: nn.Module, names: list[str], x: Tensor, x_mean: Tensor, kwargs: dict, cfg: QuantConfig
) -> ScaleResult:
    """Search alpha = step / n_grid in s = x_mean^a / w_mean^(1-a) (plus the identity) on the inspected output.

    The loss is smooth in alpha, so the even steps bracket the minimum and the two odd steps beside
    the best one find it: n_grid / 2 + 2 evaluations where the plain grid costs n_grid, and these
    evaluations are most of AWQ's time.

    names: the group's linears, relative to `inspect` ("" when inspect is the linear itself).
    x: the group's input on the search windows (n, L, in); x_mean: mean |x| per channel over all tokens.
    """
    params = {name: module for name, module in inspect.named_modules() if name in names}
    weights = [params[name].weight for name in names]
    reference = call_module(inspect, x, kwargs)
    w_mean = weight_mean(weights, cfg.group_size)

    def loss_with(scales: Tensor) -> float:
        swapped = {
            (f"{name}.weight" if name else "weight"): (
                fake_quantize(w.float() * scales, cfg.group_size, cfg.zero_point, cfg.bits) / scales
            ).to(w.dtype)
            for name, w in zip(names, weights, strict=True)
        }
        return mse(call_module(inspect, x, kwargs, swapped), reference)

    def at_step(step: int) -> ScaleResult | None:
        alpha = step / cfg.n_grid
        scales = duo_scales(x_mean, w_mean, alpha)
        if not torch.isfinite(scales).all():  # overflowing statistics: skip, never pick garbage
            return None
        loss = loss_with(scales)
        return ScaleResult(scales, alpha, loss_rtn, loss) if math.isfinite(loss) else None

    ones = torch.ones_like(x_mean)
    loss_rtn = loss_with(ones)
    tried = [r for r in map(at_step, range(0, cfg.n_grid, 2)) if r]
    if tried:
        best_step = round(min(tried, key=lambda r: r.loss_awq).alpha * cfg.n_grid)
        tried += [r for r in map(at_step, (s for s in (best_step - 1, best_step + 1) if 0 <= s < cfg.n_grid)) if r]
    identity = ScaleResult(ones, None, loss_rtn, loss_rtn)
    return min([identity, *tried], key=lambda r: r.loss_awq)  # the identity wins ties


def group_error(wg: Tensor, deq: Tensor, gram: Tensor) -> Tensor:
    """Each group's partial output error: mean over tokens of (x_g . (w_g - deq_g))^2, as d^T G d.

    wg, deq (o, G, g) fp32; gram (G, g, g) the mean x_g x_g^T of each group's input. -> (o, G).
    """
    d = (wg - deq).transpose(0, 1)  # (G, o, g)
    return (torch.bmm(d, gram) * d).sum(-1).t()


def _ranges(w_min: Tensor, w_max: Tensor, cfg: QuantConfig) -> Callable[[Tensor | int, Tensor | int], tuple]:
    """(lo, hi) for steps inwards from each end: symmetric (AutoAWQ) shrinks one bound on |w| by
    1 / n_clip_grid a step (the low step is unused); asymmetric moves each end on its own by 1 / (2
    n_clip_grid) of the range, the same reach for a range centred on zero."""
    if cfg.clip == "symmetric":
        bound = torch.maximum(w_max, -w_min)

        def symmetric(high_step, low_step):
            m = bound * (1 - high_step / cfg.n_clip_grid)
            return torch.maximum(w_min, -m), torch.minimum(w_max, m)

        return symmetric
    span = (w_max - w_min) / (2 * cfg.n_clip_grid)
    return lambda high_step, low_step: (w_min + low_step * span, w_max - high_step * span)


def _step_pairs(cfg: QuantConfig, best: tuple[Tensor, Tensor] | None = None) -> Iterator[tuple]:
    """The (high, low) steps to try: first every other step on both ends (asymmetric) or every step
    (symmetric); then, asymmetric only, the eight neighbours of each group's best pair."""
    last = int(cfg.max_shrink * cfg.n_clip_grid)
    if cfg.clip == "symmetric":
        if best is None:
            yield from ((step, 0) for step in range(last + 1))
        return
    if best is None:
        yield from itertools.product(range(0, last + 1, 2), range(0, last + 1, 2))
        return
    for dh, dl in itertools.product((-1, 0, 1), (-1, 0, 1)):
        if dh or dl:
            yield (best[0] + dh).clamp(0, last), (best[1] + dl).clamp(0, last)


@torch.no_grad()
def search_clip(w: Tensor, gram: Tensor, cfg: QuantConfig, max_elements: int = 2**24) -> tuple[Tensor, Tensor]:
    """Per (output row, group) range [lo, hi] minimising each group's partial output error: a coarse
    grid, then (asymmetric) the neighbours of each group's best, a third of the full grid's cost.

    w (out, in); gram (G, g, g) of the group's input (rounding.gram_blocks). Returns lo, hi (out, in/g).
    """
    out_features, in_features = w.shape
    rows_per_chunk = max(1, max_elements // in_features)
    chunks = []
    for start in range(0, out_features, rows_per_chunk):
        wg = grouped(w[start : start + rows_per_chunk], cfg.group_size)  # (o, G, g)
        w_min, w_max = wg.amin(-1), wg.amax(-1)
        range_at = _ranges(w_min, w_max, cfg)
        best = (torch.zeros_like(w_min), torch.zeros_like(w_min))  # (high, low) steps of each group's best
        best_err = torch.full_like(w_min, math.inf)
        for coarse in (True, False):
            for high_step, low_step in list(_step_pairs(cfg, None if coarse else best)):
                scales, zeros = range_params(*range_at(high_step, low_step), cfg.zero_point, cfg.bits)
                err = group_error(wg, round_trip(wg, scales, zeros, cfg.bits), gram)
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best = (torch.where(better, high_step, best[0]), torch.where(better, low_step, best[1]))
        chunks.append(range_at(*best))
    return torch.cat([lo for lo, _ in chunks]), torch.cat([hi for _, hi in chunks])
