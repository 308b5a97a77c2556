"""The two AWQ searches: per-input-channel scales for a group of linears, and per-group clipping."""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from awq_core.config import QuantConfig
from awq_core.quant import fake_quantize


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


@torch.no_grad()
def search_clip(w: Tensor, x: Tensor, cfg: QuantConfig, max_elements: int = 2**25) -> Tensor:
    """Per (output row, group) clipping threshold minimising each group's partial output error.

    w (out, in); x (T, in) sampled input tokens. Returns max_val (out, in/g).
    """
    out_features, in_features = w.shape
    G, g = in_features // cfg.group_size, cfg.group_size
    T = x.shape[0]
    xg = x.float().reshape(T, G, g).transpose(0, 1)  # (G, T, g)
    rows_per_chunk = max(1, max_elements // (G * T))
    chunks = []
    for start in range(0, out_features, rows_per_chunk):
        wc = w[start : start + rows_per_chunk].float()  # (o, in)
        o = wc.shape[0]
        reference = torch.bmm(xg, wc.reshape(o, G, g).permute(1, 2, 0))  # (G, T, o) per-group partial outputs
        org_max = wc.abs().reshape(o, G, g).amax(dim=-1)  # (o, G)
        best_max, best_err = org_max.clone(), torch.full((o, G), math.inf, device=w.device)
        for step in range(int(cfg.max_shrink * cfg.n_clip_grid) + 1):
            max_val = org_max * (1 - step / cfg.n_clip_grid)
            clipped = wc.reshape(o, G, g).clamp(-max_val[..., None], max_val[..., None]).reshape(o, in_features)
            q = fake_quantize(clipped, g, cfg.zero_point, cfg.bits)
            err = (torch.bmm(xg, q.reshape(o, G, g).permute(1, 2, 0)) - reference).pow(2).mean(dim=1).t()  # (o, G)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, max_val, best_max)
        chunks.append(best_max)
    return torch.cat(chunks)


def clip_(w: Tensor, max_val: Tensor, group_size: int) -> None:
    """Clamp w (out, in) in place to +-max_val (out, in/g)."""
    out_features, in_features = w.shape
    wg = w.data.view(out_features, in_features // group_size, group_size)
    bound = max_val.to(w.dtype)[..., None]
    wg.copy_(wg.clamp(-bound, bound))
