"""Verdicts on evidence: intervals, the pass / fail / inconclusive rule, and what the policy makes of it."""

import math

import numpy as np
import pytest

from awq_release.errors import ValidationError
from awq_release.settings import from_dict
from validation import tasks
from validation.evidence import bootstrap_increases, increase, paired_mean, percentile_interval
from validation.result import StageResult, gate, verdict
from validation.settings import Evidence, TaskSettings, TaskSpec, ValidationSettings


@pytest.mark.parametrize(
    ("interval", "higher_is_better", "expected"),
    [
        ((0.01, 0.02), False, "pass"),  # the whole interval within <= 0.03
        ((0.04, 0.09), False, "fail"),  # the whole interval beyond it
        ((0.01, 0.05), False, "inconclusive"),  # the threshold inside it
        ((0.04, 0.09), True, "pass"),  # >= 0.03
        ((0.0, 0.02), True, "fail"),
        ((0.02, 0.04), True, "inconclusive"),
        (None, False, "pass"),  # no interval: the point estimate (0.02) decides
    ],
)
def test_verdict_reads_the_interval_against_the_threshold(interval, higher_is_better, expected):
    assert verdict(0.02, 0.03, higher_is_better, interval) == expected


def test_inconclusive_fails_or_passes_with_a_recorded_warning():
    failing = StageResult("tasks", [gate("acc relative drop", 0.8, 0.78, 0.025, 0.03, interval=(-0.01, 0.06))])
    assert failing.status == "failed" and failing.metrics[0].verdict == "inconclusive"
    assert failing.reasons == [
        "acc relative drop: inconclusive, its interval [-0.01, 0.06] holds the threshold 0.03 "
        "(estimate 0.025; baseline 0.8, candidate 0.78); the policy fails it"
    ]
    lenient = gate("acc relative drop", 0.8, 0.78, 0.025, 0.03, interval=(-0.01, 0.06), inconclusive="warn")
    warned = StageResult("tasks", [lenient])
    assert warned.status == "passed" and lenient.verdict == "inconclusive"
    assert warned.warnings == [
        "acc relative drop: inconclusive, its interval [-0.01, 0.06] holds the threshold 0.03; "
        "passed with this warning, as the policy allows"
    ]


def test_paired_mean_is_the_normal_interval_of_the_differences():
    diffs = [0] * 70 + [1] * 10 + [-1] * 5 + [0] * 15
    mean, low, high = paired_mean(diffs, 0.95)
    half = 1.959964 * np.std(diffs, ddof=1) / 10
    assert mean == pytest.approx(0.05) and (low, high) == pytest.approx((0.05 - half, 0.05 + half))
    assert paired_mean(diffs, 0.99)[2] > high  # more confidence, a wider interval


def test_bootstrap_interval_of_a_perplexity_increase():
    rng = np.random.default_rng(1)
    tokens = [256] * 64
    diffs = list(rng.normal(0.1, 0.5, size=64) * 256 / 10)  # about +1% per token NLL, noisy per window
    point = increase(sum(diffs), sum(tokens))
    low, high = percentile_interval(bootstrap_increases(diffs, tokens, 4000), 0.95)
    assert low < point < high
    # The spread follows the windows' spread: about 1.96 standard errors of the mean NLL difference.
    se = np.std(np.asarray(diffs) / 256, ddof=1) / math.sqrt(64)
    assert (high - low) / 2 == pytest.approx(1.96 * se * (1 + point), rel=0.15)
    # Identical differences everywhere leave no doubt.
    assert percentile_interval(bootstrap_increases([2.56] * 8, [256] * 8, 500), 0.95) == pytest.approx(
        (math.expm1(0.01), math.expm1(0.01))
    )


def _items(n: int, baseline_right: int, lost: int, gained: int) -> tuple[list[int], list[int]]:
    """Per-item 0/1 for both models: the candidate loses `lost` of the baseline's right answers and
    gets `gained` of its wrong ones right."""
    baseline = [1] * baseline_right + [0] * (n - baseline_right)
    candidate = [0] * lost + [1] * (baseline_right - lost) + [1] * gained + [0] * (n - baseline_right - gained)
    return baseline, candidate


def test_a_task_near_its_threshold_is_inconclusive_not_a_coin_flip():
    """The issue's case: 415 items, a 3% gate, a point estimate under it and an interval over it."""
    baseline, candidate = _items(415, 300, lost=20, gained=12)  # relative drop 8 / 300 = 2.7%
    stats = {"acc": tasks.paired_drop(baseline, candidate)}
    settings = TaskSettings(max_drop=0.03, max_drop_critical=0.03)
    ordinary, warning = tasks.task_gate("capitals", TaskSpec("capitals.jsonl"), stats, settings)
    assert ordinary.value == pytest.approx(8 / 300) and ordinary.value < 0.03 < ordinary.interval[1]
    assert ordinary.verdict == "inconclusive" and ordinary.passed  # non-critical: a warning
    assert "415 items put a ±" in warning and "too wide for its 3% threshold" in warning
    critical, _ = tasks.task_gate("capitals", TaskSpec("capitals.jsonl", critical=True), stats, settings)
    assert critical.verdict == "inconclusive" and not critical.passed  # critical: fails by default
    strict = TaskSettings(max_drop=0.03, evidence=Evidence(inconclusive="fail"))
    assert not tasks.task_gate("capitals", TaskSpec("capitals.jsonl"), stats, strict)[0].passed
    own = TaskSpec("capitals.jsonl", critical=True, inconclusive="warn")
    assert tasks.task_gate("capitals", own, stats, settings)[0].passed

    # A candidate 1.3% worse: inconclusive on 415 items, a clear pass on ten times as many.
    baseline, candidate = _items(415, 300, lost=14, gained=10)
    near = tasks.task_gate(
        "capitals", TaskSpec("capitals.jsonl"), {"acc": tasks.paired_drop(baseline, candidate)}, settings
    )
    assert near[0].verdict == "inconclusive"
    baseline, candidate = _items(4150, 3000, lost=140, gained=100)
    clear, warning = tasks.task_gate(
        "capitals", TaskSpec("capitals.jsonl"), {"acc": tasks.paired_drop(baseline, candidate)}, settings
    )
    assert clear.verdict == "pass" and warning is None
    # A clear loss fails whatever the policy says of inconclusive ones.
    baseline, candidate = _items(415, 300, lost=60, gained=5)
    lost = tasks.task_gate(
        "capitals", TaskSpec("capitals.jsonl"), {"acc": tasks.paired_drop(baseline, candidate)}, settings
    )[0]
    assert lost.verdict == "fail" and not lost.passed


def test_evidence_settings_are_checked():
    settings = from_dict(
        ValidationSettings,
        {
            "perplexity": {"evidence": {"confidence": 0.9, "inconclusive": "warn"}},
            "power_check": {"damages": ["zeroed_mlp"]},
        },
    )
    assert settings.perplexity.evidence == Evidence(confidence=0.9, inconclusive="warn")
    assert settings.tasks.evidence.inconclusive == "warn" and settings.long_context.evidence.inconclusive == "fail"
    assert settings.power_check.damages == ("zeroed_mlp",)
    with pytest.raises(ValidationError, match=r"confidence must be in \[0.5, 1\)"):
        from_dict(ValidationSettings, {"tasks": {"evidence": {"confidence": 95}}})
    with pytest.raises(ValidationError, match="expected one of"):
        from_dict(ValidationSettings, {"tasks": {"evidence": {"inconclusive": "ignore"}}})
    with pytest.raises(ValidationError, match="expected one of"):
        from_dict(ValidationSettings, {"power_check": {"damages": ["bit_flips"]}})
