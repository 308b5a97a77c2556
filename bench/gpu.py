"""GPU check: the W4A16 kernel, the CUDA quantizer and the perplexity stage, measured in one call.

    python3 -m bench.gpu --prepare .gpu-assets     # here, once: the demo tokenizer, a text, the commit
    python3 -m bench.gpu --assets .gpu-assets      # on the GPU machine

Writes one JSON file, bench/results/gpu-DATE-COMMIT.json (and a copy under $OUT where that is set),
rewritten after every section so a run cut short keeps what it measured:
  - environment: GPU, driver, CUDA, torch, triton and transformers versions;
  - kernel: kernels.awq_gemm against kernels.reference (in the activations' dtype) and an fp32 dense
    matmul, on the K x N of Llama-3-8B's and 70B's projections, M = 1 to 256, group 64 and 128, fp16
    and bf16; and its speed against torch.matmul in fp16 on the same shapes (triton's do_bench:
    CUDA events, warm-up, median), plain and under CUDA graph replay, as ratios;
  - quantizer: a random-weight model of Llama-3-8B's shape (its first blocks) quantized on the GPU
    with the default settings from 128 x 512 calibration tokens: seconds per block, peak GPU and
    host memory, and the whole model's time extrapolated from them;
  - cuda_vs_cpu: the same tiny model quantized on both devices in fp32 (tests run it too);
  - perplexity: validation.perplexity on a random small model and its 4-bit copy on the GPU, through
    awq_core's loader and the Triton kernel, and the 4-bit copy once more on the CPU's reference path.
Sections run in that order within --budget seconds, the kernel's main shapes first and its other
cases last, so that whatever the time allows is measured and the rest is marked as not run.
"""

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch

from awq_core.compute import Compute, resolve
from awq_core.config import QuantConfig
from awq_core.crosscheck import cuda_matches_cpu
from awq_core.packing import pack_awq
from awq_core.quant import quantize_groups
from bench.results import commit, result_path

M_VALUES = (1, 4, 16, 64, 256)
# (in, out) features of each model's linears: q/o, k/v, gate/up, down.
PROJECTIONS = {
    "llama-3-8b": {
        "q_proj": (4096, 4096),
        "k_proj": (4096, 1024),
        "gate_proj": (4096, 14336),
        "down_proj": (14336, 4096),
    },
    "llama-3-70b": {
        "q_proj": (8192, 8192),
        "k_proj": (8192, 1024),
        "gate_proj": (8192, 28672),
        "down_proj": (28672, 8192),
    },
}
# Kernel cases in the order they run: the targets' shapes first (8B, fp16, the group AWQ ships).
KERNEL_CASES = [
    (model, dtype, group) for dtype in (torch.float16, torch.bfloat16) for model in PROJECTIONS for group in (128, 64)
]
LLAMA_3_8B = dict(
    architectures=["LlamaForCausalLM"],
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
LLAMA_3_8B_LAYERS = 32
TINY_LLAMA = dict(
    architectures=["LlamaForCausalLM"],
    hidden_size=128,
    intermediate_size=256,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=49152,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)
SMALL_LLAMA = TINY_LLAMA | dict(hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_hidden_layers=4)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
TINY_QUANT = QuantConfig(group_size=32, n_grid=10, search_tokens=512)


def random_checkpoint(path: Path, tokenizer_dir: Path, device: str = "cpu", seed: int = 0, **config) -> Path:
    """A Llama-family checkpoint of random weights built on `device` from config fields, with the
    tokenizer in `tokenizer_dir`. A few input channels are boosted in every norm, as trained LLMs have
    salient channels: what AWQ's scales are for."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    hf_config = AutoConfig.for_model("llama", **config)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight"):
                param[torch.randperm(param.numel(), device=device)[:4]] *= 12.0
    model.save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, path / name)
    return path


# ---- sections: each returns its figures; run() records them, or the error, with the time taken ----


def environment() -> dict:
    import transformers
    import triton

    props = torch.cuda.get_device_properties(0)
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    )
    return {
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "nvidia_smi": smi.stdout.strip() or smi.stderr.strip(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "host_cpus": os.cpu_count(),
    }


def packed_layer(K: int, N: int, group_size: int, seed: int, device: str) -> dict[str, torch.Tensor]:
    """A random (N, K) weight with uneven input channels, group-quantized and AWQ-packed on `device`."""
    generator = torch.Generator(device).manual_seed(seed)
    w = torch.randn(N, K, device=device, generator=generator)
    w *= torch.rand(1, K, device=device, generator=generator)  # (out, in)
    return pack_awq(*quantize_groups(w, group_size))


def kernel_case(
    model: str, dtype: torch.dtype, group_size: int, timed: bool, device: str = "cuda", shapes: dict = PROJECTIONS
) -> list[dict]:
    """One row per (projection, M): the kernel's error against the reference and a dense fp32 matmul,
    relative to the largest exact output, and (fp16) its time against torch.matmul's."""
    import triton.testing

    from kernels import awq_gemm, awq_gemm_reference, dequantize_awq, triton_awq

    rows = []
    for seed, (projection, (K, N)) in enumerate(shapes[model].items()):
        layer = packed_layer(K, N, group_size, seed, device)
        args = (layer["qweight"], layer["qzeros"], layer["scales"], group_size)
        exact_weight = dequantize_awq(*args)  # (K, N) fp32
        dense = exact_weight.to(dtype)  # what an fp16 model would hold for the same linear
        for M in M_VALUES:
            x = torch.randn(M, K, device=device, dtype=dtype)
            first = time.perf_counter()
            y = awq_gemm(x, *args)
            if x.is_cuda:
                torch.cuda.synchronize()
            first_call = time.perf_counter() - first  # compiling and tuning a new shape
            exact = x.float() @ exact_weight
            scale = exact.abs().max().item()
            row = {
                "model": model,
                "projection": projection,
                "K": K,
                "N": N,
                "M": M,
                "group_size": group_size,
                "dtype": str(dtype).removeprefix("torch."),
                "error_vs_reference": (y.float() - awq_gemm_reference(x, *args).float()).abs().max().item() / scale,
                "error_vs_fp32": (y.float() - exact).abs().max().item() / scale,
                "first_call_s": round(first_call, 3),
                "config": str(triton_awq.schedule(M)[0].best_config),
            }
            if timed:
                w4, fp16 = partial(awq_gemm, x, *args), partial(torch.matmul, x, dense)
                row["w4a16_us"] = triton.testing.do_bench(w4, warmup=10, rep=50, return_mode="median") * 1e3
                row["fp16_us"] = triton.testing.do_bench(fp16, warmup=10, rep=50, return_mode="median") * 1e3
                row["speedup"] = row["fp16_us"] / row["w4a16_us"]
                row["w4a16_graph_us"] = triton.testing.do_bench_cudagraph(w4, rep=20, return_mode="median") * 1e3
                row["fp16_graph_us"] = triton.testing.do_bench_cudagraph(fp16, rep=20, return_mode="median") * 1e3
                row["speedup_graph"] = row["fp16_graph_us"] / row["w4a16_graph_us"]
            rows.append(row)
            print(
                f"  {model} {projection} M={M} g{group_size} {row['dtype']}: err {row['error_vs_fp32']:.1e}"
                + (f", {row['speedup']:.2f}x fp16 ({row['speedup_graph']:.2f}x graphed)" if timed else ""),
                flush=True,
            )
        del layer, exact_weight, dense
    return rows


def quantizer(
    work: Path, assets: Path, layers: int, n_samples: int, seqlen: int, device: str = "cuda", shape: dict = LLAMA_3_8B
) -> dict:
    """The default quantizer on `device` over the first `layers` blocks of a Llama-3-8B-shaped model."""
    from awq_core import quantize

    checkpoint = random_checkpoint(work / "llama-3-8b-shape", assets, device, **shape, num_hidden_layers=layers)
    calib = torch.randint(0, shape["vocab_size"], (n_samples, seqlen), generator=torch.Generator().manual_seed(0))
    config = QuantConfig(group_size=128)
    report = quantize(checkpoint, work / "llama-3-8b-awq", calib, config, progress=False, compute=Compute(device))
    steady = sorted(report.block_seconds[1:] or report.block_seconds)
    per_block = steady[len(steady) // 2]
    outside_blocks = report.seconds - sum(report.block_seconds)
    return {
        "model": "Llama-3-8B shape, random weights",
        "blocks_quantized": layers,
        "calibration": [n_samples, seqlen],
        "settings": report.config,
        "compute": report.compute,
        "seconds": report.seconds,
        "block_seconds": report.block_seconds,
        "median_block_seconds_after_first": per_block,
        "seconds_outside_blocks": round(outside_blocks, 2),
        "extrapolated_32_blocks_s": round(
            outside_blocks + report.block_seconds[0] + (LLAMA_3_8B_LAYERS - 1) * per_block, 1
        ),
        "peak_gpu_mb": report.peak_gpu_mb,
        "peak_rss_mb": report.peak_rss_mb,
        "block_mse": report.block_mse,
    }


def cuda_vs_cpu(work: Path, assets: Path) -> dict:
    checkpoint = random_checkpoint(work / "tiny", assets, **TINY_LLAMA, num_hidden_layers=2)
    calib = torch.randint(0, TINY_LLAMA["vocab_size"], (4, 128), generator=torch.Generator().manual_seed(0))
    return cuda_matches_cpu(checkpoint, calib, work / "tiny-out", TINY_QUANT)


def _tuned_shapes() -> int:
    """How many shapes the Triton kernel has been tuned for in this process (0 before its import)."""
    kernels = sys.modules.get("kernels.triton_awq")
    return sum(len(kernels.schedule(M)[0].cache) for M in (1, kernels.MEDIUM_M, kernels.MEDIUM_M + 1)) if kernels else 0


def perplexity_stage(work: Path, assets: Path, device: str = "cuda") -> dict:
    """validation.perplexity through the loader and the kernel on the GPU, then the 4-bit copy's
    perplexity again on the CPU, where AWQLinear dequantizes and no Triton runs."""
    from awq_core import quantize
    from awq_core.checkpoint import load_tokenizer
    from awq_release.texts import token_stream, window_prefix
    from validation import perplexity
    from validation.models import load_model
    from validation.settings import PerplexitySettings

    baseline = random_checkpoint(work / "small", assets, device, **SMALL_LLAMA)
    texts = tuple(sorted(assets.glob("*.txt")))
    calib = torch.randint(0, SMALL_LLAMA["vocab_size"], (16, 512), generator=torch.Generator().manual_seed(1))
    candidate = work / "small-awq"
    quantize(baseline, candidate, calib, QuantConfig(group_size=128), progress=False, compute=Compute(device))
    settings = PerplexitySettings(domain_texts=texts, max_tokens=8192, seqlen=512, stride=256)
    gpu = resolve(Compute(device))
    tuned_before = _tuned_shapes()
    result = perplexity.run(baseline, candidate, settings, gpu)
    cpu = resolve(Compute("cpu", gpu.dtype_name))
    tokenizer = load_tokenizer(candidate)
    stream = token_stream(tokenizer, list(texts))[: settings.max_tokens]
    cpu_model = load_model(candidate, cpu)
    cpu_windows = perplexity.window_nlls(
        cpu_model, stream, settings.seqlen, settings.stride, prefix=window_prefix(tokenizer)
    )
    return {
        "model": SMALL_LLAMA,
        "compute": result.compute,
        "kernel_shapes_tuned_by_the_stage": _tuned_shapes() - tuned_before,  # > 0: the Triton kernel ran
        "metric": dataclasses.asdict(result.metrics[0]),
        "details": result.details,
        "seconds": round(result.seconds, 2),
        "candidate_ppl_cpu_reference": perplexity.pooled_perplexity(cpu_windows),
    }


# ---- the run ----


class Run:
    """Sections in order within a time budget; the result file is rewritten after each."""

    def __init__(self, out: Path, budget_s: float, commit: str):
        self.out, self.deadline, self.started = out, time.monotonic() + budget_s, time.monotonic()
        stamp = datetime.datetime.now(datetime.UTC)
        self.result = {
            "date": stamp.isoformat(timespec="seconds"),
            "commit": commit,
            "budget_s": budget_s,
            "sections": {},
        }

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def section(self, name: str, fn: Callable[[], object], needs_s: float = 0.0) -> object:
        if self.left() < needs_s:
            self.result["sections"][name] = {"status": "not run", "why": f"{self.left():.0f} s left of the budget"}
            print(f"{name}: not run, {self.left():.0f} s left", flush=True)
            self.save()
            return None
        print(f"{name} ...", flush=True)
        start = time.monotonic()
        try:
            figures, status = fn(), "ok"
        except Exception:
            figures, status = {"traceback": traceback.format_exc()[-4000:]}, "failed"
            print(figures["traceback"], flush=True)
        seconds = round(time.monotonic() - start, 1)
        self.result["sections"][name] = {"status": status, "seconds": seconds, "figures": figures}
        print(f"{name}: {status} in {seconds} s", flush=True)
        self.save()
        return figures

    def save(self) -> None:
        self.result["wall_s"] = round(time.monotonic() - self.started, 1)
        text = json.dumps(self.result, indent=1, default=str)
        for path in (self.out, Path(os.environ["OUT"]) / self.out.name if os.environ.get("OUT") else None):
            if path:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.with_suffix(".tmp").write_text(text)
                path.with_suffix(".tmp").rename(path)


def kernel_sections(run: Run, cases: Iterator[tuple[str, torch.dtype, int]]) -> None:
    for model, dtype, group in cases:
        name = f"kernel {model} {str(dtype).removeprefix('torch.')} g{group}"
        run.section(name, partial(kernel_case, model, dtype, group, dtype == torch.float16), needs_s=30)


def plan(args: argparse.Namespace) -> str:
    return "\n".join(
        [
            f"kernel: {len(KERNEL_CASES)} cases (model x dtype x group) x {len(M_VALUES)} M x 4 projections, "
            "errors against kernels.reference and fp32; fp16 timed against torch.matmul",
            f"quantizer: Llama-3-8B shape, first {args.layers} of {LLAMA_3_8B_LAYERS} blocks, "
            f"{args.n_samples} x {args.seqlen} calibration tokens, default settings, extrapolated to 32 blocks",
            "cuda_vs_cpu: a tiny Llama quantized on both devices in fp32",
            f"perplexity: validation.perplexity on a random {SMALL_LLAMA['hidden_size']}-wide Llama and its 4-bit copy",
            f"within {args.budget:.0f} s, writing {args.out or result_path('gpu', 'COMMIT')}",
        ]
    )


def prepare(assets: Path) -> None:
    """Copy what the GPU machine cannot fetch: the demo tokenizer, a text, and this commit's id."""
    from awq_release.demo import demo_assets

    demo = demo_assets()
    assets.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(demo.model_dir / name, assets / name)
    (assets / "sotu.txt").write_text("\n\n".join(p.read_text() for p in demo.calibration_texts[-3:]))
    code = commit()
    (assets / "commit").write_text(code)
    print(f"prepared {assets} at commit {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", type=Path, help="write the assets folder here, then stop")
    parser.add_argument("--assets", type=Path, default=Path(".gpu-assets"))
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for every section together")
    parser.add_argument("--layers", type=int, default=4, help="Llama-3-8B blocks to quantize")
    parser.add_argument("--n-samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return
    print("GPU check plan:\n" + plan(args), flush=True)
    if not torch.cuda.is_available():
        print("error: no CUDA device: this torch sees no GPU. Run the check on a GPU host.", file=sys.stderr)
        sys.exit(2)
    if not (args.assets / "tokenizer.json").is_file():
        print(
            f"error: {args.assets} has no tokenizer.json: make it with --prepare {args.assets} first.", file=sys.stderr
        )
        sys.exit(2)
    code = (args.assets / "commit").read_text().strip() if (args.assets / "commit").is_file() else "unknown"
    out = args.out or result_path("gpu", code)
    run = Run(out, args.budget, code)
    run.section("environment", environment)
    first, rest = KERNEL_CASES[:1], KERNEL_CASES[1:]
    kernel_sections(run, iter(first))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        run.section(
            "quantizer", partial(quantizer, work, args.assets, args.layers, args.n_samples, args.seqlen), needs_s=60
        )
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(exist_ok=True)
        run.section("cuda_vs_cpu", partial(cuda_vs_cpu, work, args.assets), needs_s=20)
        run.section("perplexity", partial(perplexity_stage, work / "ppl", args.assets), needs_s=30)
    kernel_sections(run, iter(rest))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
