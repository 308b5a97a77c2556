"""A release's README.md: a Hugging Face model card (YAML front matter with the gates' results as
`model-index`), snippets that start the release as it was load-tested, the gates, the power check,
the calibration data and the lineage, all from the release's manifest."""

import json
import re

import yaml

from orchestrator.release.reports import VERDICTS_EXPLAINED, power_summary, power_table, rounding_steps
from validation.result import format_interval, format_limit, format_number

STAGE_DATA = {  # model-index `dataset.name` of each stage: what it measured on
    "perplexity": "held-out domain and general texts (paired perplexity)",
    "tasks": "task sets (multiple choice and generation, item by item)",
    "long_context": "long documents (perplexity by context length, retrieval probes)",
    "load": "load-test prompts served by vLLM (latency and throughput per concurrency level)",
}
FIGURES = {  # plots/NAME.png -> caption
    "quantization": "Quantization error per decoder block (output MSE against the original block)",
    "long_context": "Perplexity by context length, and the gated increase with its interval against the ceiling",
    "load": "Latency percentiles per concurrency level against the SLA's ceilings (vLLM, this release's serve.sh)",
}
TRANSFORMERS_NEEDS = {  # what transformers needs to load each format (awq_core.formats)
    "awq": "`gptqmodel` (`pip install --no-build-isolation gptqmodel==7.5.0`; its kernels compute in bf16 or fp16)",
    "compressed-tensors": "the pure-Python `compressed-tensors` package (CPU too)",
}
SOURCES_LISTED = 12  # calibration files named in the card; manifest.json lists every one
VLLM_PORT = 8000  # vLLM's default --port


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _rounded(x: float | None) -> float | None:
    """Six significant digits: the card's YAML is read by people; manifest.json keeps every digit."""
    return None if x is None else float(f"{x:.6g}")


def model_index(manifest: dict) -> list[dict]:
    """The gates' results as the Hub's model-index: one result per measured stage, a metric per
    gate holding the candidate's figure; the baseline, estimate, interval, threshold and verdict in
    its args."""
    results = []
    for stage, result in manifest["validation"].items():
        if not result["metrics"]:
            continue
        metrics = [
            {
                "type": _slug(name),
                "name": name,
                "value": _rounded(m["candidate"]),
                "args": {
                    "baseline": _rounded(m["baseline"]),
                    "estimate": _rounded(m["value"]),
                    "interval": [_rounded(x) for x in m["interval"]] if m["interval"] else None,
                    "threshold": m["threshold"],
                    "bound": m["bound"],
                    "verdict": m["verdict"],
                },
                "verified": False,
            }
            for name, m in result["metrics"].items()
        ]
        task = {"type": "text-generation", "name": f"{stage} gate"}
        results.append(
            {"task": task, "dataset": {"name": STAGE_DATA[stage], "type": f"{stage}-gate"}, "metrics": metrics}
        )
    return [{"name": f"{manifest['model']}-{manifest['version']}", "results": results}]


def front_matter(manifest: dict) -> dict:
    card, fmt = manifest["card"], manifest["quantization"]["settings"].get("format", "awq")
    data = {
        "license": card["license"],
        "base_model": card["base_model"],
        "base_model_relation": "quantized" if card["base_model"] else None,
        "pipeline_tag": "text-generation",
        "library_name": "transformers",
        "tags": list(dict.fromkeys(["awq", "int4", "4-bit", "quantized", fmt, "vllm", "awq-release"])),
        "model-index": model_index(manifest),
    }
    return {k: v for k, v in data.items() if v is not None}


def _request(manifest: dict) -> str:
    served, host = manifest["serving"]["engine"]["served-model-name"], manifest["serving"]["engine"]["host"]
    if manifest["card"]["chat_template"]:
        path, body = "chat/completions", {"messages": [{"role": "user", "content": "Hello! Who are you?"}]}
    else:
        path, body = "completions", {"prompt": "The capital of France is"}
    payload = json.dumps({"model": served, **body, "max_tokens": 64})
    return f"curl http://{host}:{VLLM_PORT}/v1/{path} -H 'Content-Type: application/json' \\\n  -d '{payload}'"


def _target_line(serving: dict) -> str:
    engine = serving["engine"]
    if serving["target"] == "cpu":
        kv = engine["kv-cache-memory-bytes"] / 2**30
        return f"vLLM's CPU build (AVX-512 for 4-bit weights), {kv:g} GiB of KV cache"
    share = engine["gpu-memory-utilization"]
    return f"GPU, {engine['tensor-parallel-size']} way tensor parallel, {share:.0%} of each GPU's memory"


def usage_lines(manifest: dict, path: str) -> list[str]:
    """Snippets per tool, with the release's own path, served name, host and port."""
    serving, fmt = manifest["serving"], manifest["quantization"]["settings"].get("format", "awq")
    env = [f"{k}={v}" if v is not None else f"unset {k}" for k, v in serving["env"].items()]
    chat = manifest["card"]["chat_template"]
    generate = (
        [
            'messages = [{"role": "user", "content": "Hello! Who are you?"}]',
            'ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")',
        ]
        if chat
        else ['ids = tokenizer("The capital of France is", return_tensors="pt").input_ids']
    )
    return [
        "## Use it",
        "",
        f"### vLLM, as the load stage served it ({_target_line(serving)})",
        "",
        f"`serve.sh` sets the environment (`{'`, `'.join(env)}`) and starts vLLM's OpenAI-compatible server with "
        f"`vllm-config.yaml`; its arguments go to vLLM. Run it with the Python that has vLLM first on `PATH` "
        "(or `PYTHON=/path/to/python`):",
        "",
        "```bash",
        f"sh {path}/serve.sh --port {VLLM_PORT}",
        _request(manifest),
        "```",
        "",
        f"### transformers (needs {TRANSFORMERS_NEEDS[fmt]})",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'path = "{path}"',
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "model = AutoModelForCausalLM.from_pretrained(path)",
        *generate,
        "reply = model.generate(ids, max_new_tokens=64)[0, ids.shape[1] :]",
        "print(tokenizer.decode(reply, skip_special_tokens=True))",
        "```",
        "",
        "### Python, no extra package (this project's loader)",
        "",
        "```python",
        "from awq_core.loader import load_quantized",
        "",
        f'model = load_quantized("{path}")  # a transformers model: generate as above',
        "```",
    ]


def gate_rows(manifest: dict) -> list[str]:
    rows = []
    for stage, result in manifest["validation"].items():
        if result.get("status") == "skipped":  # allowed by the policy, and said so: never shown as passed
            rows.append(f"| {stage} | not run: {'; '.join(result['reasons'])} | - | - | - | - | - | - |")
        for name, m in result["metrics"].items():
            interval = format_interval(tuple(m["interval"]) if m.get("interval") else None)
            rows.append(
                f"| {stage} | {name} | {format_number(m['baseline'])} | {format_number(m['candidate'])} | "
                f"{format_number(m.get('value'))} | {interval} | {format_limit(m['threshold'], m['bound'])} | "
                f"{m.get('verdict', '-')} |"
            )
    return rows


def calibration_lines(calibration: dict) -> list[str]:
    sources = sorted(calibration["sources"].items())
    total = calibration["n_samples"] * calibration["seqlen"]
    lines = [
        "## Calibration data",
        "",
        f"{total} tokens: {calibration['n_samples']} windows of {calibration['seqlen']} tokens "
        f"(token ids sha256 `{calibration['tokens_hash']}`) from {len(sources)} files:",
        "",
        "| file | sha256 |",
        "|---|---|",
        *[f"| `{path}` | `{digest[:16]}…` |" for path, digest in sources[:SOURCES_LISTED]],
    ]
    if len(sources) > SOURCES_LISTED:
        lines += ["", f"and {len(sources) - SOURCES_LISTED} more, each with its hash in manifest.json."]
    return lines


def lineage_lines(manifest: dict) -> list[str]:
    checkpoint, quantization = manifest["checkpoint"], manifest["quantization"]
    facts = [
        ("source folder", f"`{checkpoint['path']}`"),
        ("checkpoint content sha256", f"`{checkpoint['content_hash']}`"),
        *(
            [("merged LoRA adapter", f"`{checkpoint['adapter']}` onto `{checkpoint['base_model']}`")]
            if checkpoint["adapter"]
            else []
        ),
        ("quantized output sha256", f"`{quantization['output_hash']}`"),
        ("release policy sha256", f"`{manifest['policy']['hash']}`"),
        ("attempt (Dagster run)", f"`{manifest['attempt']}`"),
        ("quantization", f"{quantization['seconds']:.0f} s"),
    ]
    return [
        "## Lineage",
        "",
        *[f"- {name}: {value}" for name, value in facts],
        "",
        "Every file's sha256 is in manifest.json.",
    ]


def promoted_because(manifest: dict) -> str:
    skipped = [stage for stage, result in manifest["validation"].items() if result.get("status") == "skipped"]
    if not skipped:
        return "Every gate below passed."
    return f"Every gate below passed; {', '.join(skipped)} did not run here, which the policy allows (see why below)."


def model_card(manifest: dict, figures: tuple[str, ...] = ()) -> str:
    """The release's README.md; `figures` are the names of its plots/NAME.png files."""
    path = manifest["serving"]["engine"]["model"]  # the release folder
    q = manifest["quantization"]["settings"]
    fmt = q.get("format", "awq")
    power = manifest.get("power_check")
    lines = [
        "---",
        yaml.safe_dump(front_matter(manifest), sort_keys=False).rstrip(),
        "---",
        "",
        f"# {manifest['model']} {manifest['version']} (AWQ INT4)",
        "",
        f"4-bit AWQ of checkpoint `{manifest['checkpoint']['name']}`"
        + (f" (a fine-tune of `{manifest['card']['base_model']}`)" if manifest["card"]["base_model"] else "")
        + f": group size {q['group_size']}, {'asymmetric' if q['zero_point'] else 'symmetric'}, {rounding_steps(q)}, "
        f"written as `{fmt}`, calibrated on {manifest['calibration']['n_samples'] * manifest['calibration']['seqlen']} "
        f"tokens of the team's own texts (listed below). {promoted_because(manifest)}",
        "",
        *usage_lines(manifest, path),
        "",
        "## Validation against the unquantized model",
        "",
        VERDICTS_EXPLAINED,
        "",
        "| stage | gate | baseline | candidate | estimate | interval | threshold | verdict |",
        "|---|---|---|---|---|---|---|---|",
        *gate_rows(manifest),
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
    lines += ["", *calibration_lines(manifest["calibration"]), "", *lineage_lines(manifest)]
    return "\n".join(lines) + "\n"
