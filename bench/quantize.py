"""Quantization benchmark on the demo model: original vs RTN vs AWQ perplexity, wall time, peak memory.

    .venv/bin/python -m bench.quantize [--n-samples 64 --seqlen 512 --group-size 64] [--propagate both] \
        [--device D --dtype T]

Device and dtype are awq_core.compute's (auto: CUDA if present, else bf16 only on CPUs with native
bf16); the table prints what each run used, its seconds per block, and peak host and GPU memory.

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

from transformers import AutoTokenizer

from awq_core.compute import Compute, resolve
from orchestrator.demo import demo_assets
from validation.models import load_model
from validation.perplexity import perplexity


def quantize_in_child(model_dir: Path, out_dir: Path, calib: list[Path], args, method: str, propagate: str) -> dict:
    command = [
        str(Path(sys.executable).parent / "awq-release"),
        "quantize",
        str(model_dir),
        str(out_dir),
        "--calib",
        *map(str, calib),
        "--group-size",
        str(args.group_size),
        "--n-samples",
        str(args.n_samples),
        "--seqlen",
        str(args.seqlen),
        "--method",
        method,
        "--propagate",
        propagate,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--json",
    ]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-samples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--propagate", choices=("quantized", "original", "both"), default="quantized")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    compute = resolve(Compute(args.device, args.dtype))

    assets = demo_assets()
    bf16_bytes = sum(p.stat().st_size for p in assets.model_dir.glob("*.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    texts = assets.eval_streams(tokenizer, args.eval_tokens)
    blocks = json.loads((assets.model_dir / "config.json").read_text())["num_hidden_layers"]
    print(f"compute: {compute}")
    print(
        f"demo model {assets.model_dir.name}: {bf16_bytes / 2**20:.0f} MiB BF16; group {args.group_size}; "
        f"calibration {args.n_samples} x {args.seqlen} tokens of SOTU < 2000; eval {args.eval_tokens} tokens each of "
        "SOTU >= 2000 (domain) and Shakespeare (general); windows of 512 every 256\n"
    )

    rows = []
    start = time.perf_counter()
    original = load_model(assets.model_dir, compute)
    baseline = {name: perplexity(original, ids) for name, ids in texts.items()}
    rows.append(("original (BF16 weights)", baseline, None))
    print(f"original evaluated in {time.perf_counter() - start:.0f} s")

    runs = [("rtn", "quantized")] + [
        ("awq", p) for p in (("quantized", "original") if args.propagate == "both" else (args.propagate,))
    ]
    with tempfile.TemporaryDirectory() as work:
        for method, propagate in runs:
            out_dir = Path(work) / f"{method}-{propagate}"
            summary = quantize_in_child(assets.model_dir, out_dir, assets.calibration_texts, args, method, propagate)
            model = load_model(out_dir, compute)
            label = "RTN" if method == "rtn" else f"AWQ ({propagate} outputs feed the next block)"
            rows.append((label, {name: perplexity(model, ids) for name, ids in texts.items()}, summary))

    columns = (("device", 7), ("dtype", 9), ("wall s", 7), ("s/block", 8), ("peak RSS MiB", 13), ("above start", 12))
    columns += (("that / BF16", 12), ("peak GPU MiB", 13))
    header = " ".join(f"{name:>{width}}" for name, width in columns)
    print(f"\n{'model':44} {'domain ppl':>11} {'general ppl':>12} {header}")
    for label, ppl, summary in rows:
        figures = ""
        if summary:
            added = summary["peak_rss_mb"] - summary["start_rss_mb"]
            gpu = "-" if summary["peak_gpu_mb"] is None else f"{summary['peak_gpu_mb']:.0f}"
            figures = (
                f"{summary['compute']['device']:>7} {summary['compute']['dtype']:>9} {summary['seconds']:7.0f} "
                f"{summary['seconds'] / blocks:8.1f} "
                f"{summary['peak_rss_mb']:13.0f} {added:12.0f} {added * 2**20 / bf16_bytes:12.2f} {gpu:>13}"
            )
        print(f"{label:44} {ppl['domain']:11.3f} {ppl['general']:12.3f} {figures}")
    rtn = rows[1][1]
    print("\nperplexity gap to BF16, as a fraction of RTN's gap (target <= 0.5):")
    for label, ppl, _ in rows[2:]:
        fractions = {name: (ppl[name] - baseline[name]) / (rtn[name] - baseline[name]) for name in texts}
        print(f"  {label:42} domain {fractions['domain']:.2f}   general {fractions['general']:.2f}")


if __name__ == "__main__":
    main()
