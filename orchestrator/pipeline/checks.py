"""Each validation stage's gate: a blocking asset check that its stage asset emits with its result."""

import dagster as dg

from validation import StageResult


def gate_name(stage: str) -> str:
    return f"{stage}_gate"


def gate_spec(stage: str, asset_name: str) -> dg.AssetCheckSpec:
    """ERROR severity blocks the release downstream; WARN (a stage the policy let skip) blocks nothing."""
    description = (
        f"Every {stage} metric of the candidate is within its threshold of the original, "
        "judged on its confidence interval where the stage measures one."
    )
    return dg.AssetCheckSpec(gate_name(stage), asset=asset_name, blocking=True, description=description)


def gate_result(result: StageResult) -> dg.AssetCheckResult:
    table = {
        m.name: {
            "value": m.value,
            "interval": list(m.interval) if m.interval else None,
            "threshold": m.threshold,
            "verdict": m.verdict,
            "passed": m.passed,
        }
        for m in result.metrics
    }
    # A stage the policy lets skip is not a pass: it shows as a failed warning, which blocks nothing.
    severity = dg.AssetCheckSeverity.WARN if result.status == "skipped" else dg.AssetCheckSeverity.ERROR
    return dg.AssetCheckResult(
        check_name=gate_name(result.stage),
        passed=result.status == "passed",
        severity=severity,
        metadata={
            "status": result.status,
            "reasons": dg.MetadataValue.json(result.reasons),
            "metrics": dg.MetadataValue.json(table),
            "inconclusive": [m.name for m in result.metrics if m.verdict == "inconclusive"],
        },
    )
