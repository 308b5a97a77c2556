"""Quantization benchmark on the demo model: BF16 vs RTN vs AWQ perplexity, wall time, peak memory.

    .venv/bin/python -m bench.quantize [--n-samples 64 --seqlen 512 --group-size 64] [--propagate both]

Every figure is measured in this run, on this machine. Each quantization runs in a child process
and its peak RSS is taken while quantize() runs; "above start" subtracts what the process held
when quantize() began (interpreter, torch, tokenized calibration texts).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from awq_core.loader import load_quantized
from orchestrator.demo import demo_assets
from validation.perplexity import perplexity


def quantize_in_child(model_dir: Path, out_dir: Path, calib: list[Path], args, method: str, propagate: str) -> dict:
    command = [
        str(Path(sys.executable).parent / "awq-release"), "quantize", str(model_dir), str(out_dir), "--calib", *map(str, calib),
        "--group-size", str(args.group_size), "--n-samples", str(args.n_samples), "--seqlen", str(args.seqlen),
        "--method", method, "--propagate", propagate, "--json",
    ]  # fmt: skip
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-samples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--propagate", choices=("quantized", "original", "both"), default="quantized")
    args = parser.parse_args()

    assets = demo_assets()
    bf16_bytes = sum(p.stat().st_size for p in assets.model_dir.glob("*.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    texts = assets.eval_streams(tokenizer, args.eval_tokens)
    print(f"demo model {assets.model_dir.name}: {bf16_bytes / 2**20:.0f} MiB BF16; group {args.group_size}; "
          f"calibration {args.n_samples} x {args.seqlen} tokens of SOTU < 2000; eval {args.eval_tokens} tokens each of "
          "SOTU >= 2000 (domain) and Shakespeare (general); windows of 512 every 256\n")

    rows = []
    start = time.perf_counter()
    bf16 = AutoModelForCausalLM.from_pretrained(assets.model_dir, dtype=torch.bfloat16)
    baseline = {name: perplexity(bf16, ids) for name, ids in texts.items()}
    rows.append(("BF16", baseline, None))
    print(f"BF16 evaluated in {time.perf_counter() - start:.0f} s")

    runs = [("rtn", "quantized")] + [("awq", p) for p in (("quantized", "original") if args.propagate == "both" else (args.propagate,))]
    with tempfile.TemporaryDirectory() as work:
        for method, propagate in runs:
            out_dir = Path(work) / f"{method}-{propagate}"
            summary = quantize_in_child(assets.model_dir, out_dir, assets.calibration_texts, args, method, propagate)
            model = load_quantized(out_dir)
            label = "RTN" if method == "rtn" else f"AWQ ({propagate} outputs feed the next block)"
            rows.append((label, {name: perplexity(model, ids) for name, ids in texts.items()}, summary))

    print(f"\n{'model':44} {'domain ppl':>11} {'general ppl':>12} {'wall s':>8} {'peak RSS MiB':>13} {'above start':>12} {'that / BF16 size':>17}")
    for label, ppl, summary in rows:
        added = summary["peak_rss_mb"] - summary["start_rss_mb"] if summary else 0
        figures = f"{summary['seconds']:8.0f} {summary['peak_rss_mb']:13.0f} {added:12.0f} {added * 2**20 / bf16_bytes:17.2f}" if summary else ""
        print(f"{label:44} {ppl['domain']:11.3f} {ppl['general']:12.3f} {figures}")
    rtn = rows[1][1]
    print("\nperplexity gap to BF16, as a fraction of RTN's gap (target <= 0.5):")
    for label, ppl, _ in rows[2:]:
        fractions = {name: (ppl[name] - baseline[name]) / (rtn[name] - baseline[name]) for name in texts}
        print(f"  {label:42} domain {fractions['domain']:.2f}   general {fractions['general']:.2f}")


if __name__ == "__main__":
    main()
