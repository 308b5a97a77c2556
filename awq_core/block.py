"""AWQ on one decoder block: collect input statistics, search scales and clipping, quantize, pack."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from awq_core.architectures import Architecture, ScaleGroup
from awq_core.config import QuantConfig
from awq_core.model import run_block, run_until
from awq_core.packing import LAYOUTS
from awq_core.quant import as_stored, dequantize_groups, grouped, quantize_groups, range_params, round_to
from awq_core.rounding import InputMoments, gptq_round, refine_range, toward_original
from awq_core.search import ScaleResult, mse, search_clip, search_scales
from awq_release.errors import QuantizationError


@dataclass
class GroupInputs:
    """What one forward pass tells a scale group about its input."""

    abs_sum: Tensor  # (in,) fp32 sum of |x| over every calibration token
    tokens: int
    search: list[Tensor]  # inputs of the first search windows, (n, L, in) each
    kwargs: dict  # keyword arguments the inspected module was called with
    moments: InputMoments | None  # what the rounding steps need of x x^T, over every calibration token


@dataclass
class BlockResult:
    output: Tensor  # (N, L, C) what the next block receives
    tensors: dict[str, Tensor]  # the block's checkpoint tensors, packed linears included
    layers: list[dict]  # one report row per linear
    output_mse: float  # quantized vs original block output
    original_output: Tensor | None  # (N, L, C) the original model's block output, where its input was given


def _moments_needed(cfg: QuantConfig) -> InputMoments | None:
    """GPTQ and fit_original need the whole hessian, the range searches only its blocks, RTN neither."""
    if cfg.method == "rtn" or not (cfg.gptq or cfg.refine or cfg.fit_original or cfg.clip != "none"):
        return None
    return InputMoments(cfg.group_size, full=cfg.gptq or cfg.fit_original)


def _original_run(
    block: nn.Module, arch: Architecture, original: Tensor, kwargs: dict
) -> tuple[Tensor, dict[str, list[Tensor]]]:
    """The untouched block on the original model's input: its output, and what each group's
    linears read there, chunk by chunk as run_block hands them over (fit_original), kept where the
    activations are kept."""
    read: dict[str, list[Tensor]] = {group.prev: [] for group in arch.groups}
    handles = [
        block.get_submodule(group.linears[0]).register_forward_pre_hook(
            lambda _, args, chunks=read[group.prev]: chunks.append(args[0].to(original.device))
        )
        for group in arch.groups
    ]
    try:
        return run_block(block, original, kwargs), read
    finally:
        for handle in handles:
            handle.remove()


def _pairing(read: list[Tensor] | None, scales: Tensor | None = None) -> Callable[[Tensor], Tensor | None]:
    """For each chunk of a group's inputs x in turn, what the group read at the same tokens in the
    original model (over `scales` where these linears already read x / scales); None without it."""
    chunks = iter(read or ())

    def original_of(x: Tensor) -> Tensor | None:
        if read is None:
            return None
        original = next(chunks).to(x.device)
        return original if scales is None else original / scales.to(x.dtype)

    return original_of


def _collect(
    block: nn.Module,
    arch: Architecture,
    hidden: Tensor,
    kwargs: dict,
    search_windows: int,
    cfg: QuantConfig,
    original_read: dict[str, list[Tensor]] | None,
) -> tuple[Tensor, dict[str, GroupInputs]]:
    """One forward of the original block; hooks record each group's input statistics, paired with
    what the group read in the original model where that is given."""
    inputs: dict[str, GroupInputs] = {}
    handles = []
    for group in arch.groups:
        first = block.get_submodule(group.linears[0])
        abs_sum = torch.zeros(first.in_features, device=first.weight.device)
        later = cfg.sequential and group != arch.groups[0]  # measured when its turn comes (_moments_now)
        record = inputs[group.prev] = GroupInputs(abs_sum, 0, [], {}, None if later else _moments_needed(cfg))

        original_of = _pairing(original_read[group.prev] if original_read else None)

        def on_input(module, args, record=record, original_of=original_of):
            x = args[0]
            record.abs_sum += x.abs().float().sum(dim=(0, 1))
            record.tokens += x.shape[0] * x.shape[1]
            if record.moments is not None:
                record.moments.add(x, original_of(x))
            if sum(t.shape[0] for t in record.search) < search_windows:
                record.search.append(x)

        def on_inspect(module, args, kwargs, record=record):
            record.kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}

        handles.append(block.get_submodule(group.linears[0]).register_forward_pre_hook(on_input))
        handles.append(block.get_submodule(group.inspect).register_forward_pre_hook(on_inspect, with_kwargs=True))
    try:
        output = run_block(block, hidden, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return output, inputs


def _moments_now(
    block: nn.Module,
    group: ScaleGroup,
    hidden: Tensor,
    kwargs: dict,
    cfg: QuantConfig,
    original_read: list[Tensor] | None,
    scales: Tensor | None,
) -> InputMoments:
    """The group's input moments from the block as it is now (scaled, and with the groups before it
    quantized: sequential rounding), run only as far as the group; paired with what it read in the
    original model, over the group's scales as these linears read it, where that is given."""
    moments, original_of = _moments_needed(cfg), _pairing(original_read, scales)
    run_until(block, hidden, kwargs, block.get_submodule(group.linears[0]), lambda x: moments.add(x, original_of(x)))
    return moments


def _apply_scales(block: nn.Module, arch: Architecture, group: ScaleGroup, scales: Tensor) -> None:
    """Fold 1/s into the previous op's output and s into the linears' input columns: the block's
    function is unchanged."""
    prev = block.get_submodule(group.prev)
    if isinstance(prev, nn.Linear):
        prev.weight.data.div_(scales.view(-1, 1).to(prev.weight.dtype))
        if prev.bias is not None:
            prev.bias.data.div_(scales.to(prev.bias.dtype))
    else:  # a norm computing (norm_offset + w) * x
        offset = arch.norm_offset
        prev.weight.data.copy_(((prev.weight.float() + offset) / scales - offset).to(prev.weight.dtype))
    for name in group.linears:
        linear = block.get_submodule(name)
        linear.weight.data.mul_(scales.view(1, -1).to(linear.weight.dtype))


def _shares_shape(block: nn.Module, group: ScaleGroup) -> bool:
    prev = block.get_submodule(group.prev)
    width = prev.out_features if isinstance(prev, nn.Linear) else prev.weight.shape[0]
    return width == block.get_submodule(group.linears[0]).in_features


def _store_(block: nn.Module, arch: Architecture, store_dtype: torch.dtype) -> dict[str, Tensor]:
    """The block's unpacked tensors (norms with 1/s folded in, biases) as the checkpoint stores them.

    They are rounded to the storage dtype in place too, so the next block sees what the written
    checkpoint computes, and a resumed run, which reads them back, continues bit for bit.
    """
    stored = {}
    for name, t in block.state_dict().items():
        if name.rsplit(".", 1)[0] not in arch.linears or name.endswith(".bias"):
            t.copy_(t.to(store_dtype))
            stored[name] = t.to("cpu", store_dtype)
    return stored


def _round_linear(
    w: Tensor, moments: InputMoments | None, cfg: QuantConfig, clip: bool
) -> tuple[Tensor, Tensor, Tensor, float]:
    """One linear's integers, fp16 scales and zeros after AWQ's scaling, and the share of its
    groups' ranges the clipping kept. RTN: each group's own range, rounded to nearest."""
    if cfg.method == "rtn":
        return *quantize_groups(w, cfg.group_size, cfg.zero_point, cfg.bits), 1.0
    if moments is not None and moments.cross is not None:
        w = toward_original(w, moments, cfg.gptq_damp)
    wg = grouped(w, cfg.group_size)
    w_min, w_max = wg.amin(-1), wg.amax(-1)
    lo, hi = search_clip(w, moments.blocks, cfg) if clip and cfg.clip != "none" else (w_min, w_max)
    kept_range = ((hi - lo) / (w_max - w_min).clamp(min=1e-12)).mean().item()
    scales, zeros = range_params(lo, hi, cfg.zero_point, cfg.bits)
    if cfg.refine:
        scales, zeros = refine_range(w, moments.blocks, scales, zeros, cfg.group_size, cfg.bits)
    if cfg.gptq:
        qg = gptq_round(w, moments.mean, scales, zeros, cfg.group_size, cfg.bits, cfg.gptq_damp, cfg.gptq_act_order)
    else:
        qg = round_to(wg, scales, zeros, cfg.bits)
    return *as_stored(qg, scales, zeros), kept_range


@torch.no_grad()
def quantize_block(
    block: nn.Module,
    arch: Architecture,
    hidden: Tensor,
    kwargs: dict,
    cfg: QuantConfig,
    store_dtype: torch.dtype,
    original: Tensor | None = None,
) -> BlockResult:
    """hidden: the block's calibration input (N, L, C), on the block's device or the host. The block's
    weights are replaced by their fake-quantized values; its tensors come back on the host, packed
    linears in cfg.format's layout and everything else in `store_dtype`. `cfg` is decided: its
    "auto" settings are settled for the calibration set (QuantConfig.decided_for). `original`: the
    block's input in the original model, which `fit_original` fits the linears' outputs to (None:
    hidden, as for the first block)."""
    if "auto" in (cfg.gptq, cfg.clip, cfg.fit_original) or (cfg.fit_original and not cfg.sequential):
        raise QuantizationError("quantize_block needs decided settings: pass cfg.decided_for(calibration tokens)[0].")
    N, L, _ = hidden.shape
    search_windows = min(N, max(1, math.ceil(cfg.search_tokens / L)))
    original_output, original_read = None, None
    if cfg.fit_original:
        original_output, original_read = _original_run(block, arch, hidden if original is None else original, kwargs)
    reference, inputs = _collect(block, arch, hidden, kwargs, search_windows, cfg, original_read)

    scale_results: dict[str, ScaleResult | None] = {}
    for group in arch.groups:
        record = inputs[group.prev]
        x = torch.cat(record.search)[:search_windows]  # (n, L, in)
        if cfg.method == "rtn" or not _shares_shape(block, group):  # GQA: v_proj emits fewer channels than o_proj reads
            scale_results[group.prev] = None
        else:
            names = [name.removeprefix(group.inspect).lstrip(".") for name in group.linears]
            result = search_scales(
                block.get_submodule(group.inspect), names, x, record.abs_sum / record.tokens, record.kwargs, cfg
            )
            _apply_scales(block, arch, group, result.scales)
            if record.moments is not None:
                record.moments = record.moments.scaled(result.scales)
            scale_results[group.prev] = result

    tensors: dict[str, Tensor] = {}
    layers: list[dict] = []
    for group in arch.groups:
        moments, result = inputs[group.prev].moments, scale_results[group.prev]
        if moments is None and _moments_needed(cfg) is not None:  # sequential: the inputs as they are now
            read = original_read[group.prev] if original_read else None
            moments = _moments_now(block, group, hidden, kwargs, cfg, read, None if result is None else result.scales)
        for name in group.linears:
            linear = block.get_submodule(name)
            q, scales, zeros, kept_range = _round_linear(linear.weight, moments, cfg, clip=name not in arch.no_clip)
            linear.weight.data = dequantize_groups(q, scales, zeros, cfg.group_size).to(linear.weight.dtype)
            tensors |= {f"{name}.{key}": t.cpu() for key, t in LAYOUTS[cfg.format].pack(q, scales, zeros).items()}
            layers.append(
                {
                    "linear": name,
                    "alpha": None if result is None else result.alpha,
                    "scaled": result is not None,
                    "group_mse_rtn": None if result is None else result.loss_rtn,
                    "group_mse_awq": None if result is None else result.loss_awq,
                    "clip_ratio": kept_range,
                }
            )

    tensors |= _store_(block, arch, store_dtype)
    output = run_block(block, hidden, kwargs)
    result_output = output if cfg.propagate == "quantized" else reference
    return BlockResult(result_output, tensors, layers, mse(output, reference), original_output)
