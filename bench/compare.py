"""Our AWQ against llm-compressor's AWQModifier, same model, same calibration windows, same run.

    .venv/bin/python -m bench.compare --llmcompressor-python /path/to/llmc/bin/python [--layers 2]

llm-compressor needs its own environment (`pip install torch==2.13.0 llmcompressor` in a venv).
On 2 CPU cores it takes minutes per decoder layer, so both tools quantize the first `--layers`
blocks of the demo model (the same truncated folder) with the benchmark's 64 x 512 calibration
tokens; the full-model figure is the per-block time times the model's block count.
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
from orchestrator.demo import demo_assets


def truncate(model_dir: Path, out_dir: Path, layers: int) -> Path:
    """The first `layers` decoder blocks of a single-file checkpoint, with its tokenizer and config."""
    out_dir.mkdir()
    tensors = load_file(model_dir / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}, out_dir / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((model_dir / "config.json").read_text())
    (out_dir / "config.json").write_text(json.dumps(config | {"num_hidden_layers": layers}))
    for path in model_dir.iterdir():
        if path.suffix != ".safetensors" and path.name != "config.json":
            (out_dir / path.name).write_bytes(path.read_bytes())
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llmcompressor-python", required=True, type=Path)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--n-samples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--group-size", type=int, default=64)
    args = parser.parse_args()

    assets = demo_assets()
    total_blocks = json.loads((assets.model_dir / "config.json").read_text())["num_hidden_layers"]
    calib = build_calibration(AutoTokenizer.from_pretrained(assets.model_dir), assets.calibration_texts, args.n_samples, args.seqlen)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        save_file({"input_ids": calib}, work / "calib.safetensors")
        model_dir = truncate(assets.model_dir, work / "model", args.layers)
        start = time.perf_counter()
        quantize(model_dir, work / "ours", calib, QuantConfig(group_size=args.group_size), progress=False)
        ours = time.perf_counter() - start
        peer = subprocess.run([str(args.llmcompressor_python), str(Path(__file__).with_name("llmcompressor_awq.py")), str(model_dir), str(work / "calib.safetensors"), str(args.group_size)],
                              check=True, capture_output=True, text=True)  # fmt: skip
        theirs = json.loads(peer.stdout.strip().splitlines()[-1])["seconds"]
    print(f"{args.layers} of {total_blocks} blocks of {assets.model_dir.name}, group {args.group_size}, {args.n_samples} x {args.seqlen} calibration tokens")
    print(f"{'':22} {'seconds':>9} {'s / block':>10} {'full model (est.) s':>20}")
    for name, seconds in (("awq_core", ours), ("llm-compressor AWQ", theirs)):
        print(f"{name:22} {seconds:9.1f} {seconds / args.layers:10.1f} {seconds / args.layers * total_blocks:20.0f}")
    print(f"awq_core wall time / llm-compressor's: {ours / theirs:.2f} (target <= 0.5)")


if __name__ == "__main__":
    main()
