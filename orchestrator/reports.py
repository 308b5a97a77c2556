"""Markdown for the UI and the registry: gate tables and the model card."""

from validation.result import Metric, format_number


def metrics_table(metrics: list[Metric]) -> str:
    rows = [
        f"| {m.name} | {format_number(m.baseline)} | {format_number(m.candidate)} | {format_number(m.value)} | "
        f"{m.limit} | {'pass' if m.passed else 'FAIL'} |"
        for m in metrics
    ]
    return "\n".join(
        ["| gate | baseline | candidate | value | threshold | result |", "|---|---|---|---|---|---|", *rows]
    )


def model_card(manifest: dict) -> str:
    q = manifest["quantization"]["settings"]
    lines = [
        f"# {manifest['model']} {manifest['version']} (AWQ INT4)",
        "",
        f"4-bit AWQ of checkpoint `{manifest['checkpoint']['name']}` (sha256 "
        f"{manifest['checkpoint']['content_hash'][:16]}…), "
        f"group size {q['group_size']}, {'asymmetric' if q['zero_point'] else 'symmetric'}, "
        f"calibrated on {manifest['calibration']['n_samples']} × "
        f"{manifest['calibration']['seqlen']} tokens of the team's domain text.",
        "",
        "Serve it as is: `python -m vllm.entrypoints.openai.api_server --config vllm-config.yaml`.",
        "",
        "## Validation against the unquantized model",
        "",
        "| stage | gate | baseline | candidate | threshold |",
        "|---|---|---|---|---|",
    ]
    for stage, result in manifest["validation"].items():
        if result.get("status") == "skipped":  # allowed by the policy, and said so: never shown as passed
            lines.append(f"| {stage} | not run: {'; '.join(result['reasons'])} | - | - | - |")
        for name, m in result["metrics"].items():
            lines.append(
                f"| {stage} | {name} | {format_number(m['baseline'])} | {format_number(m['candidate'])} | "
                f"{format_number(m['threshold'])} |"
            )
    lines += [
        "",
        "## Lineage",
        "",
        f"checkpoint id {manifest['checkpoint']['id']}, calibration set id {manifest['calibration']['id']}, "
        f"quantization run id {manifest['quantization']['id']}, release "
        f"id {manifest['release_id']}; file hashes in manifest.json.",
    ]
    return "\n".join(lines) + "\n"
