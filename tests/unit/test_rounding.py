"""The rounding steps after AWQ's scales: each lowers the output error it targets, and never raises it."""

import pytest
import torch

from awq_core.config import GPTQ_MIN_TOKENS, QuantConfig
from awq_core.quant import grouped, range_params, round_to
from awq_core.rounding import (
    InputMoments,
    blocks_of,
    gptq_round,
    gram_blocks,
    hessian,
    refine_range,
    toward_original,
)
from awq_core.search import group_error, search_clip
from awq_release.errors import QuantizationError, ValidationError
from orchestrator.release.policy import parse_policy
from orchestrator.release.reports import rounding_steps

OUT, IN, G = 48, 256, 64


@pytest.fixture(scope="module")
def layer() -> tuple[torch.Tensor, torch.Tensor]:
    """A weight with heavy-tailed rows and inputs whose channels are correlated and unevenly large."""
    torch.manual_seed(0)
    w = torch.randn(OUT, IN) * torch.rand(OUT, 1) + 0.05 * torch.randn(OUT, IN).pow(3)
    mixing = torch.eye(IN) + 0.3 * torch.randn(IN, IN) / IN**0.5
    x = (torch.randn(2048, IN) * (torch.rand(IN) * 3 + 0.1)) @ mixing  # (T, in)
    return w, x


def output_error(w: torch.Tensor, deq: torch.Tensor, x: torch.Tensor) -> float:
    return (x @ (w - deq).t()).pow(2).mean().item()


def dequantized(qg, scales, zeros) -> torch.Tensor:
    return ((qg - zeros[..., None]) * scales[..., None]).flatten(1)


def unclipped(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    wg = grouped(w, G)
    return range_params(wg.amin(-1), wg.amax(-1))


def test_gram_blocks_are_the_hessians_diagonal_blocks(layer):
    _, x = layer
    torch.testing.assert_close(gram_blocks(x, G), blocks_of(hessian(x), G))


def test_group_error_is_the_partial_output_error(layer):
    w, x = layer
    scales, zeros = unclipped(w)
    deq = dequantized(round_to(grouped(w, G), scales, zeros), scales, zeros)
    per_group = group_error(grouped(w, G), grouped(deq, G), gram_blocks(x, G))  # (out, G)
    partial = torch.einsum("tgi,ogi->tog", grouped(x, G), grouped(w - deq, G)).pow(2).mean(0)  # (out, G)
    torch.testing.assert_close(per_group, partial, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("clip", ["symmetric", "asymmetric"])
def test_clip_search_never_loses_to_the_full_range(layer, clip):
    w, x = layer
    gram = gram_blocks(x, G)
    cfg = QuantConfig(group_size=G, clip=clip)
    lo, hi = search_clip(w, gram, cfg)
    wg = grouped(w, G)
    assert (lo >= wg.amin(-1)).all() and (hi <= wg.amax(-1)).all()

    def error(scales, zeros):
        return group_error(wg, grouped(dequantized(round_to(wg, scales, zeros), scales, zeros), G), gram)

    clipped, full = error(*range_params(lo, hi)), error(*unclipped(w))
    assert (clipped <= full).all() and clipped.sum() < 0.95 * full.sum()


def test_asymmetric_clip_beats_symmetric_on_skewed_groups(layer):
    w, x = layer
    skewed = w + 0.8 * w.abs()  # positive tails longer than negative ones
    gram = gram_blocks(x, G)
    errors = {}
    for clip in ("symmetric", "asymmetric"):
        scales, zeros = range_params(*search_clip(skewed, gram, QuantConfig(group_size=G, clip=clip)))
        errors[clip] = output_error(skewed, dequantized(round_to(grouped(skewed, G), scales, zeros), scales, zeros), x)
    assert errors["asymmetric"] < errors["symmetric"]


def test_refined_ranges_are_never_worse_and_better_overall(layer):
    w, x = layer
    gram = gram_blocks(x, G)
    scales, zeros = unclipped(w)
    refined = refine_range(w, gram, scales, zeros, G)
    assert refined[0].dtype == torch.float32 and torch.equal(refined[0], refined[0].half().float())  # fp16-exact
    assert ((refined[1] >= 0) & (refined[1] <= 15) & (refined[1] == refined[1].round())).all()
    wg = grouped(w, G)
    before = group_error(wg, grouped(dequantized(round_to(wg, scales, zeros), scales, zeros), G), gram)
    after = group_error(wg, grouped(dequantized(round_to(wg, *refined), *refined), G), gram)
    assert (after <= before).all() and after.sum() < 0.95 * before.sum()


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_without_correlated_inputs_is_round_to_nearest(layer, act_order):
    w, _ = layer
    scales, zeros = unclipped(w)
    diagonal = torch.diag(torch.rand(IN) + 0.5)
    compensated = gptq_round(w, diagonal, scales, zeros, G, damp=0.0, act_order=act_order)
    assert torch.equal(compensated, round_to(grouped(w, G), scales, zeros))


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lowers_the_output_error_with_the_same_group_parameters(layer, act_order):
    w, x = layer
    scales, zeros = unclipped(w)
    rounded = round_to(grouped(w, G), scales, zeros)
    compensated = gptq_round(w, hessian(x), scales, zeros, G, act_order=act_order)
    assert compensated.min() >= 0 and compensated.max() <= 15
    assert output_error(w, dequantized(compensated, scales, zeros), x) < 0.8 * output_error(
        w, dequantized(rounded, scales, zeros), x
    )


def test_gptq_tolerates_inputs_that_are_always_zero(layer):
    w, x = layer
    x = x.clone()
    x[:, :5] = 0  # a dead input channel makes the hessian singular
    scales, zeros = unclipped(w)
    q = gptq_round(w, hessian(x), scales, zeros, G)
    assert torch.isfinite(q).all()


def test_settings_refuse_refinement_without_zero_points():
    with pytest.raises(QuantizationError, match="refine: false"):
        QuantConfig(zero_point=False, refine=True)
    assert not QuantConfig(zero_point=False).refine


def test_the_card_names_every_rounding_step_the_settings_took():
    settings = {"clip": "asymmetric", "refine": True, "sequential": True, "gptq": True, "gptq_why": "set explicitly"}
    assert rounding_steps(settings) == (
        "AWQ scales + asymmetric range search + ranges refitted for output error"
        " + fitted group after group to the quantized inputs + GPTQ rounding"
    )
    assert rounding_steps(settings | {"fit_original": True, "refine": False}) == (
        "AWQ scales + asymmetric range search + fitted group after group to the original model's outputs"
        " + GPTQ rounding"
    )
    assert rounding_steps({"method": "rtn"}) == "round to nearest"


def test_gptq_auto_is_decided_by_the_calibration_size():
    below, why_below = QuantConfig().decided_for(GPTQ_MIN_TOKENS - 1)
    at, why_at = QuantConfig().decided_for(GPTQ_MIN_TOKENS)
    assert (below.gptq, at.gptq) == (False, True)
    assert why_below == f"auto: {GPTQ_MIN_TOKENS - 1} calibration tokens, fewer than {GPTQ_MIN_TOKENS}"
    assert why_at == f"auto: {GPTQ_MIN_TOKENS} calibration tokens, at least {GPTQ_MIN_TOKENS}"
    decided = QuantConfig(gptq=False, clip="symmetric", fit_original=False)
    assert QuantConfig(gptq=False).decided_for(10**6) == (decided, "set explicitly")
    assert QuantConfig(method="rtn").decided_for(10**6)[0].gptq is False
    with pytest.raises(QuantizationError, match="choose true, false or 'auto'"):
        QuantConfig(gptq="yes")


def test_fitting_to_the_original_follows_gptq_and_measures_sequentially():
    def decided(tokens: int, **settings) -> tuple:
        config = QuantConfig(**settings).decided_for(tokens)[0]
        return config.fit_original, config.sequential

    assert decided(GPTQ_MIN_TOKENS) == (True, True)
    assert decided(GPTQ_MIN_TOKENS - 1) == (False, False)
    assert decided(GPTQ_MIN_TOKENS, fit_original=False) == (False, False)
    assert decided(GPTQ_MIN_TOKENS, method="rtn", fit_original=True) == (False, False)
    assert decided(1, gptq=False, fit_original=True) == (True, True)
    with pytest.raises(QuantizationError, match="fit_original='yes': choose true, false or 'auto'"):
        QuantConfig(fit_original="yes")


def test_auto_clip_is_asymmetric_where_gptq_rounds_with_zero_points():
    def clip(tokens: int, **settings) -> str:
        return QuantConfig(**settings).decided_for(tokens)[0].clip

    assert (clip(GPTQ_MIN_TOKENS - 1), clip(GPTQ_MIN_TOKENS)) == ("symmetric", "asymmetric")
    assert (clip(512, gptq=True), clip(10**6, gptq=False)) == ("asymmetric", "symmetric")
    assert clip(10**6, zero_point=False) == "symmetric"  # the symmetric quantizer has one bound to search
    assert clip(10**6, clip="none") == "none"


@pytest.mark.parametrize(("written", "gptq"), [("auto", "auto"), ("true", True), ("false", False)])
def test_a_policy_sets_gptq_as_yaml_spells_it(written, gptq):
    assert parse_policy(f"quantization:\n  gptq: {written}\n", "policy.yaml").quantization.gptq == gptq


def test_a_policy_with_another_gptq_value_names_the_choices():
    with pytest.raises(ValidationError, match=r"quantization\.gptq: expected bool or 'auto', got 'always'"):
        parse_policy("quantization:\n  gptq: always\n", "policy.yaml")


@pytest.mark.parametrize("full", [True, False])
def test_moments_gathered_in_chunks_and_scaled_are_those_of_the_scaled_inputs(layer, full):
    _, x = layer
    moments = InputMoments(G, full=full)
    for chunk in x.split(700):  # uneven chunks, as run_block hands them over
        moments.add(chunk)
    scales = torch.rand(IN) + 0.5
    expected = hessian(x / scales) if full else gram_blocks(x / scales, G)
    torch.testing.assert_close(moments.scaled(scales).mean, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(moments.scaled(scales).blocks, gram_blocks(x / scales, G), rtol=1e-4, atol=1e-5)


def drifted(x: torch.Tensor) -> torch.Tensor:
    """What a quantized model's layer reads where the original read x: x plus an error correlated
    with it (the blocks before lost part of some channels) and noise."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    return 0.9 * x + 0.1 * x.roll(1, dims=1) + 0.05 * noise * x.std(0)


def test_cross_moments_gathered_in_chunks_and_scaled_are_those_of_the_scaled_inputs(layer):
    _, x_original = layer
    x = drifted(x_original)
    moments = InputMoments(G, full=True)
    for chunk, original in zip(x.split(700), x_original.split(700), strict=True):
        moments.add(chunk, original)
    scales = torch.rand(IN) + 0.5
    expected = (x_original / scales).t() @ (x / scales) / x.shape[0]
    torch.testing.assert_close(moments.scaled(scales).cross, expected, rtol=1e-4, atol=1e-5)


def test_toward_original_makes_up_for_the_drift_in_its_input(layer):
    """Reading the drifted input, the fitted weights give what w gave reading the original one more
    closely than w does, the more so the less they are held to w; with no drift they are w."""
    w, x_original = layer
    x = drifted(x_original)
    moments = InputMoments(G, full=True)
    moments.add(x, x_original)

    def miss(fitted: torch.Tensor) -> float:
        return (x_original @ w.t() - x @ fitted.t()).pow(2).mean().item()

    misses = [miss(toward_original(w, moments, damp)) for damp in (0.01, 0.3)]
    assert misses[0] < misses[1] < 0.5 * miss(w)
    undrifted = InputMoments(G, full=True)
    undrifted.add(x_original, x_original)
    torch.testing.assert_close(toward_original(w, undrifted, 0.3), w, rtol=1e-4, atol=1e-4)
