"""Markdown for the UI and the registry: gate tables, the power check's table and the model card."""

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
    if power["blind"]:
        return (
            f"**WARNING: the gates caught none of the {power['planted']} planted damages.** They cannot be trusted "
            "to reject a broken model: add items, texts or lengths, or tighten thresholds."
        )
    verdicts = [set(d["verdicts"].values()) for d in power["damages"]]
    weak = sum("inconclusive" in v and "caught" not in v for v in verdicts)  # rejected on weak evidence alone
    caveat = f"; {weak} of them only on inconclusive evidence" if weak else ""
    return f"Power check: the gates caught {power['caught']} of {power['planted']} planted damages{caveat}."


def _gate_rows(manifest: dict) -> list[str]:
    rows = []
    for stage, result in manifest["validation"].items():
        if result.get("status") == "skipped":  # allowed by the policy, and said so: never shown as passed
            rows.append(f"| {stage} | not run: {'; '.join(result['reasons'])} | - | - | - | - | - | - |")
        for name, m in result["metrics"].items():
            interval = format_interval(tuple(m["interval"]) if m.get("interval") else None)
            rows.append(
                f"| {stage} | {name} | {format_number(m['baseline'])} | {format_number(m['candidate'])} | "
                f"{format_number(m.get('value'))} | {interval} | {format_number(m['threshold'])} | "
                f"{m.get('verdict', '-')} |"
            )
    return rows


# How each tool loads a release, by its format (awq_core.formats). Users' own scripts can always use ours.
TRANSFORMERS_LOADING = {
    "awq": (
        "needs `gptqmodel` (`pip install --no-build-isolation gptqmodel==7.5.0`; 7.7 needs torch 2.14): "
        '`AutoModelForCausalLM.from_pretrained("RELEASE")`. Its kernels compute in bf16 or fp16 whatever '
        "dtype is asked for."
    ),
    "compressed-tensors": (
        "needs the pure-Python `compressed-tensors` package, on CPU too: "
        '`AutoModelForCausalLM.from_pretrained("RELEASE")`.'
    ),
}
FIGURES = {  # plots/NAME.png -> caption
    "quantization": "Quantization error per decoder block (output MSE against the original block)",
    "long_context": "Perplexity of the final tokens by context length, baseline and candidate",
    "load": "Latency percentiles per concurrency level (vLLM, the engine arguments in vllm-config.yaml)",
}


def loading_lines(fmt: str) -> list[str]:
    return [
        f"- **vLLM** (quantization `{fmt}`): `python -m vllm.entrypoints.openai.api_server --config vllm-config.yaml`,",
        "  the engine arguments the load stage measured the SLA on.",
        f"- **transformers**: {TRANSFORMERS_LOADING[fmt]}",
        '- **Python, no extra package**: `awq_core.loader.load_quantized("RELEASE")` (this project).',
    ]


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


def model_card(manifest: dict, figures: tuple[str, ...] = ()) -> str:
    """The release's README.md; `figures` are the names of its plots/NAME.png files."""
    q = manifest["quantization"]["settings"]
    fmt = q.get("format", "awq")  # releases made before formats existed are AWQ GEMM
    power = manifest.get("power_check")
    lines = [
        f"# {manifest['model']} {manifest['version']} (AWQ INT4)",
        "",
        f"4-bit AWQ of checkpoint `{manifest['checkpoint']['name']}` (sha256 "
        f"{manifest['checkpoint']['content_hash'][:16]}…), "
        f"group size {q['group_size']}, {'asymmetric' if q['zero_point'] else 'symmetric'}, {rounding_steps(q)}, "
        f"calibrated on {manifest['calibration']['n_samples']} × "
        f"{manifest['calibration']['seqlen']} tokens of the team's domain text, written as `{fmt}`.",
        "",
        "## Loading it",
        "",
        *loading_lines(fmt),
        "",
        "## Validation against the unquantized model",
        "",
        VERDICTS_EXPLAINED,
        "",
        "| stage | gate | baseline | candidate | estimate | interval | threshold | verdict |",
        "|---|---|---|---|---|---|---|---|",
        *_gate_rows(manifest),
        "",
        "## Can these gates catch damage? (power check)",
        "",
        power_summary(power),
    ]
    if power:
        lines += ["", power_table(power)]
    if figures:
        lines += ["", "## Figures"]
        for name in figures:
            caption = FIGURES.get(name, name)
            lines += ["", f"![{caption}](plots/{name}.png)", "", f"*{caption}.*"]
    lines += [
        "",
        "## Lineage",
        "",
        f"checkpoint id {manifest['checkpoint']['id']}, calibration set id {manifest['calibration']['id']}, "
        f"quantization run id {manifest['quantization']['id']}, release "
        f"id {manifest['release_id']}; file hashes in manifest.json.",
    ]
    return "\n".join(lines) + "\n"
