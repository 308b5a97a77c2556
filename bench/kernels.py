"""W4A16 GEMM benchmark: kernels.awq_gemm against a dense half-precision matmul, in the same run.

    .venv/bin/python -m bench.kernels [--group-size 128] [--peak-gbps 3350]

On CUDA it times the Triton kernel against torch's FP16 matmul and reports the achieved bandwidth
as a fraction of the GPU's peak. On CPU it times the torch reference (dequantize, then matmul)
against a BF16 matmul on already-dense weights. Writes bench/results/kernels-DATE-COMMIT.json.
"""

import argparse
import time
from functools import partial

import torch

from bench.gpu import packed_layer
from bench.results import write_result
from kernels import awq_gemm

M_VALUES = (1, 4, 16, 64, 256, 1024)
KN_SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096))
PEAK_GBPS = {"H100 SXM": 3350, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350, "H200": 4800, "A100": 2039}


def timed(fn, reps: int) -> float:
    """Median seconds of `fn` after a warm-up."""
    if torch.cuda.is_available():
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument(
        "--peak-gbps", type=float, help="the device's peak memory bandwidth (default: looked up by GPU name)"
    )
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions on CPU")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.bfloat16)
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    peak = args.peak_gbps or next((gbps for key, gbps in PEAK_GBPS.items() if key in name), None)
    dense_name = "torch FP16" if cuda else "torch BF16 (dense)"
    print(
        f"{name}; group {args.group_size}; {'Triton kernel' if cuda else 'torch reference'} vs {dense_name} matmul"
        + (f"; peak bandwidth {peak:.0f} GB/s" if peak else "")
    )
    rows = []
    print(f"{'M':>5} {'K':>6} {'N':>6} {'w4a16 us':>10} {'dense us':>10} {'speed-up':>9} {'GB/s':>8} {'of peak':>8}")
    for K, N in KN_SHAPES:
        layer = packed_layer(K, N, args.group_size, seed=0, device=device)
        dense = torch.randn(K, N, device=device, dtype=dtype) * 0.02
        for M in M_VALUES:
            x = torch.randn(M, K, device=device, dtype=dtype)
            t_w4 = timed(
                partial(awq_gemm, x, layer["qweight"], layer["qzeros"], layer["scales"], args.group_size), args.reps
            )
            t_dense = timed(partial(torch.matmul, x, dense), args.reps)
            # bytes: x, int4 W, scales + zeros, y
            moved = x.numel() * 2 + K * N // 2 + (K // args.group_size) * N * (2 + 0.5) + M * N * 2
            gbps = moved / t_w4 / 1e9
            fraction = f"{gbps / peak:8.2f}" if peak else f"{'-':>8}"
            print(
                f"{M:5d} {K:6d} {N:6d} {t_w4 * 1e6:10.1f} {t_dense * 1e6:10.1f} "
                f"{t_dense / t_w4:9.2f} {gbps:8.1f} {fraction}"
            )
            rows.append({"M": M, "K": K, "N": N, "w4a16_s": t_w4, "dense_s": t_dense, "speed_up": t_dense / t_w4})
    write_result("kernels", vars(args) | {"device": name, "peak_gbps": peak}, {"shapes": rows})


if __name__ == "__main__":
    main()
