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


def power_check_record(outcomes: list[PowerCheckOutcome]) -> dict | None:
    """The recorded power check as validation.power.PowerReport.to_dict() gave it; None where none ran."""
    if not outcomes:
        return None
    damages = [DamageOutcome(o.damage, o.description, o.meant_for, o.verdicts, o.reasons, o.seconds) for o in outcomes]
    return PowerReport(list(outcomes[0].verdicts), damages).to_dict()
