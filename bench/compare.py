"""Our AWQ against llm-compressor's AWQModifier, same model, same calibration windows, same run.

    .venv/bin/python -m bench.compare --llmcompressor-python /path/to/llmc/bin/python [--layers 2]

llm-compressor needs its own environment (`pip install torch==2.13.0 llmcompressor` in a venv).
Both compute in the same precision, awq_core.compute's choice for this host (fp32 on a CPU without
native bf16, where bf16 would be emulated for both). Both quantize the demo model (or, with
--layers K, its first K blocks, for a quick timing) with the benchmark's 64 x 512 calibration
windows; on the whole model both are also scored by this project's perplexity function on held-out
text. Writes bench/results/compare-llmcompressor-DATE-COMMIT.json.
"""

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from awq_core import QuantConfig, build_calibration, quantize
from awq_core.compute import Compute, resolve
from awq_release.demo import demo_assets
from bench.results import write_result
from validation.models import load_model
from validation.perplexity import perplexity


def truncate(model_dir: Path, out_dir: Path, layers: int) -> Path:
    """The first `layers` decoder blocks of a single-file checkpoint, with its tokenizer and config."""
    out_dir.mkdir()
    tensors = load_file(model_dir / "model.safetensors")
    save_file(
        {k: v for k, v in tensors.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers},
        out_dir / "model.safetensors",
        metadata={"format": "pt"},
    )
    config = json.loads((model_dir / "config.json").read_text())
    config["num_hidden_layers"] = layers
    if "layer_types" in config:  # one attention type per block (Gemma 3, Qwen)
        config["layer_types"] = config["layer_types"][:layers]
    (out_dir / "config.json").write_text(json.dumps(config))
    for path in model_dir.iterdir():
        if path.suffix != ".safetensors" and path.name != "config.json":
            (out_dir / path.name).write_bytes(path.read_bytes())
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llmcompressor-python", required=True, type=Path)
    parser.add_argument("--layers", type=int, help="quantize only the first K blocks (timing only)")
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--n-samples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--dtype", default="auto", help="for both quantizers: auto, float32, bfloat16 or float16")
    args = parser.parse_args()
    compute = resolve(Compute("cpu", args.dtype))  # llm-compressor runs on the CPU here too
    dtype = compute.dtype_name

    assets = demo_assets()
    total_blocks = json.loads((assets.model_dir / "config.json").read_text())["num_hidden_layers"]
    blocks = args.layers or total_blocks
    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    calib = build_calibration(tokenizer, assets.calibration_texts, args.n_samples, args.seqlen)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        save_file({"input_ids": calib}, work / "calib.safetensors")
        model_dir = truncate(assets.model_dir, work / "model", args.layers) if args.layers else assets.model_dir
        command = [
            str(args.llmcompressor_python),
            "-P",
            str(Path(__file__).with_name("llmcompressor_awq.py")),
            str(model_dir),
            str(work / "calib.safetensors"),
            str(args.group_size),
            dtype,
        ]
        ours = {}
        if not args.layers:
            save_file(assets.eval_streams(tokenizer, args.eval_tokens), work / "eval.safetensors")
            command.append(str(work / "eval.safetensors"))
        start = time.perf_counter()
        quantize(
            model_dir,
            work / "ours",
            calib,
            QuantConfig(group_size=args.group_size),
            progress=False,
            compute=Compute("cpu", dtype),
        )
        seconds = time.perf_counter() - start
        if not args.layers:
            model = load_model(work / "ours", compute)
            ours = {name: perplexity(model, ids) for name, ids in load_file(work / "eval.safetensors").items()}
        # -P: keep bench/ off sys.path, or bench/kernels.py would shadow the `kernels` package transformers probes for.
        peer = subprocess.run(command, capture_output=True, text=True)
        if peer.returncode != 0:
            raise SystemExit(f"llm-compressor failed:\n{peer.stderr[-3000:]}")
        theirs = json.loads(peer.stdout.strip().splitlines()[-1])
    print(
        f"{blocks} of {total_blocks} blocks of {assets.model_dir.name}, group {args.group_size}, {args.n_samples} "
        f"x {args.seqlen} calibration tokens, "
        f"both computing in {compute}"
    )
    print(f"{'':22} {'seconds':>9} {'s / block':>10} {'domain ppl':>11} {'general ppl':>12}")
    for name, s, ppl in (("awq_core", seconds, ours), ("llm-compressor AWQ", theirs["seconds"], theirs["perplexity"])):
        figures = f"{ppl['domain']:11.3f} {ppl['general']:12.3f}" if ppl else ""
        print(f"{name:22} {s:9.1f} {s / blocks:10.1f} {figures}")
    print(f"awq_core wall time / llm-compressor's: {seconds / theirs['seconds']:.2f} (target <= 0.5)")
    figures = {
        "blocks": blocks,
        "awq_core": {"seconds": seconds, "perplexity": ours},
        "llm_compressor": {"seconds": theirs["seconds"], "perplexity": theirs["perplexity"]},
        "seconds_ratio": seconds / theirs["seconds"],
    }
    settings = {k: v for k, v in vars(args).items() if k != "llmcompressor_python"} | {"compute": str(compute)}
    write_result("compare-llmcompressor", settings, figures)


if __name__ == "__main__":
    main()
