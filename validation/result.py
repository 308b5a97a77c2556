"""What every stage returns: metrics for both models, thresholds, verdicts, pass or fail, and why;
and what the power check returns: which stage caught which planted damage."""

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["pass", "fail", "inconclusive"]
Inconclusive = Literal["fail", "warn"]  # what an inconclusive verdict decides: fail, or pass with a warning


def format_number(value: float | None) -> str:
    """A measured figure for tables and logs: 4 significant digits, '-' where there is none."""
    return "-" if value is None else f"{value:.4g}"


def format_interval(interval: tuple[float, float] | None) -> str:
    return "-" if interval is None else f"[{format_number(interval[0])}, {format_number(interval[1])}]"


Bound = Literal["ceiling", "floor"]


def bound_of(higher_is_better: bool) -> Bound:
    return "floor" if higher_is_better else "ceiling"


def format_limit(threshold: float, bound: Bound) -> str:
    """A gate's pass condition, which way it limits said in words: '<= 0.15 ceiling', '>= 40 floor'."""
    return f"{'>=' if bound == 'floor' else '<='} {format_number(threshold)} {bound}"


@dataclass
class Metric:
    """One gated figure. `value` is the point estimate the threshold limits (e.g. a relative increase),
    `interval` its confidence interval where the stage measures one; the baseline and candidate
    figures it comes from are kept beside it. `verdict` is what the evidence says, `passed` what the
    gate decides: an inconclusive verdict fails, or passes with a warning where the policy says so."""

    name: str
    baseline: float | None
    candidate: float
    value: float
    threshold: float
    verdict: Verdict
    passed: bool
    higher_is_better: bool = False  # of `value`: False means value <= threshold passes
    interval: tuple[float, float] | None = None  # None: no interval, the point estimate decides

    @property
    def limit(self) -> str:
        """The pass condition on `value`, e.g. '<= 0.15 ceiling'."""
        return format_limit(self.threshold, bound_of(self.higher_is_better))


def verdict(value: float, threshold: float, higher_is_better: bool, interval: tuple[float, float] | None) -> Verdict:
    """pass: the whole interval is within the threshold; fail: the whole interval is beyond it;
    inconclusive: the threshold lies inside it. Without an interval the point estimate decides."""

    def within(x: float) -> bool:
        return x >= threshold if higher_is_better else x <= threshold

    low, high = interval or (value, value)
    worst, best = (low, high) if higher_is_better else (high, low)
    return "pass" if within(worst) else "fail" if not within(best) else "inconclusive"


def gate(
    name: str,
    baseline: float | None,
    candidate: float,
    value: float,
    threshold: float,
    higher_is_better: bool = False,
    interval: tuple[float, float] | None = None,
    inconclusive: Inconclusive = "fail",
) -> Metric:
    decided = verdict(value, threshold, higher_is_better, interval)
    passed = decided == "pass" or (decided == "inconclusive" and inconclusive == "warn")
    return Metric(name, baseline, candidate, value, threshold, decided, passed, higher_is_better, interval)


def _reason(m: Metric) -> str:
    figures = f"baseline {format_number(m.baseline)}, candidate {format_number(m.candidate)}"
    if m.verdict == "inconclusive":
        return (
            f"{m.name}: inconclusive, its interval {format_interval(m.interval)} holds the threshold "
            f"{format_number(m.threshold)} (estimate {format_number(m.value)}; {figures}); the policy fails it"
        )
    interval = f", interval {format_interval(m.interval)}" if m.interval else ""
    return (
        f"{m.name}: {format_number(m.value)}{interval} {'<' if m.higher_is_better else '>'} threshold "
        f"{format_number(m.threshold)} ({figures})"
    )


@dataclass
class StageResult:
    stage: str
    metrics: list[Metric]
    warnings: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # per-item, per-length or per-level figures for reports
    seconds: float = 0.0
    error: str | None = None  # the stage could not measure (a server that never started): a failure
    skipped: str | None = None  # why the stage did not run, where the policy allows that: never a pass
    compute: dict | None = None  # where it ran, in what precision (awq_core.compute), or which engine
    reused: list[str] = field(default_factory=list)  # roles whose figures were measured before (validation.memo)

    @property
    def passed(self) -> bool:
        return self.error is None and self.skipped is None and all(m.passed for m in self.metrics)

    @property
    def status(self) -> str:
        """passed | failed | skipped: a skipped stage blocks no release, and is never shown as passed."""
        return "skipped" if self.skipped is not None and self.error is None else "passed" if self.passed else "failed"

    def __post_init__(self) -> None:
        self.warnings += [
            f"{m.name}: inconclusive, its interval {format_interval(m.interval)} holds the threshold "
            f"{format_number(m.threshold)}; passed with this warning, as the policy allows"
            for m in self.metrics
            if m.verdict == "inconclusive" and m.passed
        ]

    @property
    def reasons(self) -> list[str]:
        """One sentence per failed gate, or why the stage was skipped."""
        return [r for r in (self.error, self.skipped and f"skipped: {self.skipped}") if r] + [
            _reason(m) for m in self.metrics if not m.passed
        ]

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "status": self.status,
            "passed": self.passed,
            "reasons": self.reasons,
        } | dataclasses.asdict(self)


@dataclass
class DamageOutcome:
    damage: str
    description: str
    meant_for: str | None
    verdicts: dict[str, str]  # stage -> caught | inconclusive | missed (see _judge)
    reasons: dict[str, list[str]]  # stage -> why it rejected the damaged copy
    seconds: float

    @property
    def caught_by(self) -> list[str]:
        """The stages that rejected the damaged copy, on clear or on inconclusive evidence."""
        return [stage for stage, verdict in self.verdicts.items() if verdict != "missed"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"caught_by": self.caught_by}


@dataclass
class PowerReport:
    stages: list[str]
    outcomes: list[DamageOutcome]

    @property
    def caught(self) -> int:
        return sum(bool(o.caught_by) for o in self.outcomes)

    @property
    def blind(self) -> bool:
        """The gates caught none of the planted damage: they cannot be trusted to reject anything."""
        return self.caught == 0

    def to_dict(self) -> dict:
        return {
            "stages": self.stages,
            "caught": self.caught,
            "planted": len(self.outcomes),
            "blind": self.blind,
            "damages": [o.to_dict() for o in self.outcomes],
        }
