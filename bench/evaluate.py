"""Evaluation speed of an AWQ candidate against its dense original, on this host's compute.

    .venv/bin/python -m bench.evaluate [--candidate AWQ_DIR] [--tokens 4096] [--device D --dtype T]

Validation runs the candidate through kernels.AWQLinear. On the CPU there is no fused kernel: the
layer dequantizes its weight once and keeps it, where the reference path unpacks the int4 weights
again on every forward. This times perplexity over the same held-out tokens for the dense model,
the candidate as validation runs it, and the candidate through the per-call reference path, all in
one run. Without --candidate a round-to-nearest checkpoint of the demo model is made first (the
layout and the cost are the same as AWQ's).
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
from kernels import awq_gemm_reference
from orchestrator.demo import demo_assets
from validation.models import load_model
from validation.perplexity import perplexity


def timed_perplexity(model: nn.Module, ids) -> tuple[float, float]:
    start = time.perf_counter()
    value = perplexity(model, ids)
    return value, time.perf_counter() - start


def unpack_every_call(layer: kernels.linear.AWQLinear, x):
    """The reference path: unpack and dequantize the int4 weight on every forward."""
    return awq_gemm_reference(x, layer.qweight, layer.qzeros, layer.scales, layer.group_size, layer.bias)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", type=Path, help="an AWQ checkpoint of the demo model (default: make an RTN one)")
    parser.add_argument("--tokens", type=int, default=4096, help="held-out domain tokens scored")
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
            quantize(assets.model_dir, candidate, calib, QuantConfig(method="rtn"), progress=False, compute=Compute(args.device, args.dtype))
        rows = {"dense original": timed_perplexity(load_model(assets.model_dir, compute), ids)}
        rows["AWQ, dequantized once (validation)"] = timed_perplexity(load_model(candidate, compute), ids)
        forward = kernels.linear.AWQLinear.forward
        kernels.linear.AWQLinear.forward = unpack_every_call
        try:
            rows["AWQ, unpacked every call (reference)"] = timed_perplexity(load_model(candidate, compute), ids)
        finally:
            kernels.linear.AWQLinear.forward = forward
    dense_s = rows["dense original"][1]
    print(f"compute: {compute}; perplexity over {ids.numel()} held-out tokens, windows of 512 every 256")
    print(f"{'model':40} {'perplexity':>11} {'seconds':>9} {'/ dense':>8}")
    for name, (value, seconds) in rows.items():
        print(f"{name:40} {value:11.3f} {seconds:9.1f} {seconds / dense_s:8.2f}")


if __name__ == "__main__":
    main()
