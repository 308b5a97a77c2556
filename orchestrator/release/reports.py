"""Markdown for the UI, the terminal and the model card: gate tables, the power check's table, and how
the integers were chosen."""

from validation.result import Metric, format_interval, format_number

GATE_COLUMNS = "| gate | baseline | candidate | estimate | interval | threshold | verdict | result |"
VERDICTS_EXPLAINED = (
    "A gate passes when its whole confidence interval (paired, 95% unless the policy says otherwise) is within "
    "its threshold, fails when the whole interval is beyond it, and is inconclusive when the threshold lies "
    "inside it; the policy decides whether an inconclusive gate fails or passes with a warning."
)


def _result(passed: bool) -> str:
    return "pass" if passed else "FAIL"


def metrics_table(metrics: list[Metric]) -> str:
    rows = [
        f"| {m.name} | {format_number(m.baseline)} | {format_number(m.candidate)} | {format_number(m.value)} | "
        f"{format_interval(m.interval)} | {m.limit} | {m.verdict} | {_result(m.passed)} |"
        for m in metrics
    ]
    return "\n".join([GATE_COLUMNS, "|---|---|---|---|---|---|---|---|", *rows])


def power_table(power: dict) -> str:
    """validation.power.PowerReport.to_dict() (or a manifest's power_check) as a damage x stage table."""
    stages = power["stages"]
    rows = [
        f"| {d['damage']} | {d['description']} | "
        + " | ".join(d["verdicts"][s] + (" (its target)" if s == d["meant_for"] else "") for s in stages)
        + " |"
        for d in power["damages"]
    ]
    header = f"| damage | what was planted | {' | '.join(stages)} |"
    return "\n".join([header, "|" + "---|" * (2 + len(stages)), *rows])


def power_summary(power: dict | None) -> str:
    if power is None:
        return "Power check: not run (the policy's validation.power_check.run is false)."
    measured_on = power.get("measured_on")  # absent in manifests written before reuse
    where = (
        f" Measured on {measured_on}: this release shares its validation settings, quantization settings and "
        "base model (config and tokenizer), so it was not run again."
        if measured_on
        else ""
    )
    if power["blind"]:
        return (
            f"**WARNING: the gates caught none of the {power['planted']} planted damages.** They cannot be trusted "
            f"to reject a broken model: add items, texts or lengths, or tighten thresholds.{where}"
        )
    verdicts = [set(d["verdicts"].values()) for d in power["damages"]]
    weak = sum("inconclusive" in v and "caught" not in v for v in verdicts)  # rejected on weak evidence alone
    caveat = f"; {weak} of them only on inconclusive evidence" if weak else ""
    return f"Power check: the gates caught {power['caught']} of {power['planted']} planted damages{caveat}.{where}"


def rounding_steps(settings: dict) -> str:
    """How the integers were chosen, from a release's quantization settings. Releases made before
    these settings existed used AutoAWQ's symmetric clipping and plain rounding."""
    if settings.get("method") == "rtn":
        return "round to nearest"
    clip = settings.get("clip", "symmetric")
    steps = ["AWQ scales", f"{clip} range search" if clip != "none" else None]
    steps += ["ranges refitted for output error" if settings.get("refine") else None]
    fitted = "the original model's outputs" if settings.get("fit_original") else "the quantized inputs"
    steps += [f"fitted group after group to {fitted}" if settings.get("sequential") else None]
    rounding = "GPTQ rounding" if settings.get("gptq") else "rounded to nearest"
    why = settings.get("gptq_why", "")  # where "auto" decided, what it went by
    steps += [f"{rounding} ({why})" if why.startswith("auto") else rounding]
    return " + ".join(step for step in steps if step)
