"""Recorded rows as the plain figures that manifests, history and the CLI show."""

from orchestrator.lineage.models import PowerCheckOutcome, ValidationMetric
from validation.result import DamageOutcome, PowerReport, bound_of


def metric_record(m: ValidationMetric) -> dict:
    """One gate's figures, estimate, interval, threshold, verdict and decision."""
    return {
        "baseline": m.baseline,
        "candidate": m.candidate,
        "value": m.value,
        "interval": [m.low, m.high] if m.low is not None else None,
        "threshold": m.threshold,
        "bound": bound_of(m.higher_is_better),
        "verdict": m.verdict,
        "passed": m.passed,
    }


def power_report(outcomes: list[PowerCheckOutcome]) -> PowerReport:
    """Recorded outcomes (one power check's, at least one) as validation.power gave them."""
    damages = [DamageOutcome(o.damage, o.description, o.meant_for, o.verdicts, o.reasons, o.seconds) for o in outcomes]
    return PowerReport(list(outcomes[0].verdicts), damages)


def power_check_record(outcomes: list[PowerCheckOutcome], measured_on: str | None = None) -> dict | None:
    """The recorded power check as validation.power.PowerReport.to_dict() gave it, and where it was
    measured if it was reused (Lineage.power_check_measured_on); None where none ran."""
    if not outcomes:
        return None
    return power_report(outcomes).to_dict() | {"measured_on": measured_on}
