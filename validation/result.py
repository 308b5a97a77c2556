"""What every stage returns: metrics for both models, thresholds, pass or fail, and why."""

import dataclasses
from dataclasses import dataclass, field


def format_number(value: float | None) -> str:
    """A measured figure for tables and logs: 4 significant digits, '-' where there is none."""
    return "-" if value is None else f"{value:.4g}"


@dataclass
class Metric:
    """One gated figure. `value` is what the threshold limits (e.g. a relative increase); the
    baseline and candidate figures it comes from are kept beside it."""

    name: str
    baseline: float | None
    candidate: float
    value: float
    threshold: float
    passed: bool
    higher_is_better: bool = False  # of `value`: False means value <= threshold passes

    @property
    def limit(self) -> str:
        """The pass condition on `value`, e.g. '<= 0.15'."""
        return f"{'>=' if self.higher_is_better else '<='} {format_number(self.threshold)}"


def gate(
    name: str, baseline: float | None, candidate: float, value: float, threshold: float, higher_is_better: bool = False
) -> Metric:
    passed = value >= threshold if higher_is_better else value <= threshold
    return Metric(name, baseline, candidate, value, threshold, passed, higher_is_better)


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

    @property
    def passed(self) -> bool:
        return self.error is None and self.skipped is None and all(m.passed for m in self.metrics)

    @property
    def status(self) -> str:
        """passed | failed | skipped: a skipped stage blocks no release, and is never shown as passed."""
        return "skipped" if self.skipped is not None and self.error is None else "passed" if self.passed else "failed"

    @property
    def reasons(self) -> list[str]:
        """One sentence per failed gate, or why the stage was skipped."""
        return [r for r in (self.error, self.skipped and f"skipped: {self.skipped}") if r] + [
            f"{m.name}: {format_number(m.value)} {'<' if m.higher_is_better else '>'} threshold "
            f"{format_number(m.threshold)} "
            f"(baseline {format_number(m.baseline)}, candidate {format_number(m.candidate)})"
            for m in self.metrics
            if not m.passed
        ]

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "status": self.status,
            "passed": self.passed,
            "reasons": self.reasons,
        } | dataclasses.asdict(self)
