"""Evaluation speed of an AWQ candidate against its dense original, on this host's compute.

    .venv/bin/python -m bench.evaluate [--candidate AWQ_DIR] [--tokens 4096] [--device D --dtype T]

Validation runs the candidate through kernels.AWQLinear. On the CPU there is no fused kernel: the
layer dequantizes its weight once and keeps it, where the reference path unpacks the int4 weights
again on every forward. This times perplexity over the same held-out tokens (2048 tokens a forward)
and greedy decoding (one token a forward, where unpacking costs most) for the dense model, the
candidate as validation runs it, and the candidate through the per-call reference path, in one run.
Without --candidate a round-to-nearest checkpoint of the demo model is made first (the layout and the
cost are the same as AWQ's). Writes bench/results/evaluate-DATE-COMMIT.json.
"""

import argparse
import tempfile
import time
from pathlib import Path

from torch import nn
from transformers import AutoTokenizer

import kernels.linear
from awq_core import QuantConfig, build_calibration, quantize
from awq_core.compute import Compute, resolve
from awq_release.demo import demo_assets
from bench.results import write_result
from kernels import awq_gemm_reference
from validation.models import load_model
from validation.perplexity import perplexity


def timings(model: nn.Module, ids, new_tokens: int) -> tuple[float, float, float]:
    """(perplexity, its seconds, seconds to decode `new_tokens` greedily after 64 tokens)."""
    start = time.perf_counter()
    value = perplexity(model, ids)
    middle = time.perf_counter()
    model.generate(ids[None, :64], max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return value, middle - start, time.perf_counter() - middle


def unpack_every_call(layer: kernels.linear.AWQLinear, x):
    """The reference path: unpack and dequantize the int4 weight on every forward."""
    return awq_gemm_reference(x, layer.qweight, layer.qzeros, layer.scales, layer.group_size, layer.bias)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", type=Path, help="an AWQ checkpoint of the demo model (default: make an RTN one)")
    parser.add_argument("--tokens", type=int, default=4096, help="held-out domain tokens scored")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded greedily")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    compute = resolve(Compute(args.device, args.dtype))
    assets = demo_assets()
    ids = assets.eval_streams(AutoTokenizer.from_pretrained(assets.model_dir), args.tokens)["domain"]
    with tempfile.TemporaryDirectory() as work:
        candidate = args.candidate
        if candidate is None:
            calib = build_calibration(AutoTokenizer.from_pretrained(assets.model_dir), assets.calibration_texts, 4, 512)
            candidate = Path(work) / "rtn"
            quantize(
                assets.model_dir,
                candidate,
                calib,
                QuantConfig(method="rtn"),
                progress=False,
                compute=Compute(args.device, args.dtype),
            )
        rows = {"dense original": timings(load_model(assets.model_dir, compute), ids, args.new_tokens)}
        rows["AWQ, dequantized once (validation)"] = timings(load_model(candidate, compute), ids, args.new_tokens)
        forward = kernels.linear.AWQLinear.forward
        kernels.linear.AWQLinear.forward = unpack_every_call
        try:
            rows["AWQ, unpacked every call (reference)"] = timings(load_model(candidate, compute), ids, args.new_tokens)
        finally:
            kernels.linear.AWQLinear.forward = forward
    _, dense_ppl_s, dense_decode_s = rows["dense original"]
    print(
        f"compute: {compute}; perplexity over {ids.numel()} held-out tokens (windows of 512 every 256); "
        f"{args.new_tokens} tokens decoded"
    )
    print(f"{'model':40} {'perplexity':>11} {'ppl s':>7} {'/ dense':>8} {'decode s':>9} {'/ dense':>8}")
    for name, (value, ppl_s, decode_s) in rows.items():
        print(
            f"{name:40} {value:11.3f} {ppl_s:7.1f} {ppl_s / dense_ppl_s:8.2f} {decode_s:9.2f} "
            f"{decode_s / dense_decode_s:8.2f}"
        )
    figures = {
        name: {"perplexity": value, "perplexity_s": ppl_s, "decode_s": decode_s}
        for name, (value, ppl_s, decode_s) in rows.items()
    }
    write_result("evaluate", vars(args) | {"candidate": str(args.candidate), "compute": str(compute)}, figures)


if __name__ == "__main__":
    main()
