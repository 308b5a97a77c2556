"""Where work runs and in what precision: decided here, once, for the quantizer, validation and the CLI.

`auto` picks CUDA when there is a GPU (bf16, or fp16 where the GPU lacks bf16), else the CPU in
bf16 only where the CPU multiplies bf16 natively (AVX512_BF16 or AMX), fp32 otherwise: on an
AVX2-only CPU torch emulates bf16 and fp16 matmuls, many times slower than fp32. A checkpoint's
storage dtype is a property of its files, never chosen here.
"""

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from awq_release.errors import ComputeError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 dot products


@dataclass(frozen=True)
class Compute:
    """The user's setting, as written in a policy or on the command line."""

    device: str = "auto"  # auto | cpu | cuda | cuda:INDEX
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16

    def __post_init__(self) -> None:
        kind, _, index = self.device.partition(":")
        if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
            raise ComputeError(f"compute.device={self.device!r}: choose auto, cpu, cuda or cuda:INDEX (e.g. cuda:1).")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ComputeError(f"compute.dtype={self.dtype!r}: choose auto, {', '.join(DTYPES)}.")


@dataclass(frozen=True)
class Resolved:
    """What work actually runs on, and why."""

    device: torch.device
    dtype: torch.dtype
    why: str

    @property
    def dtype_name(self) -> str:
        """The dtype as settings spell it: "float32", "bfloat16", "float16"."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def address_part(self) -> str:
        """The compute as every result's address spells it: the device kind and dtype, "cpu float32"."""
        return f"{self.device.type} {self.dtype_name}"

    @property
    def device_label(self) -> str:
        """The device and, for a GPU, its model: "cpu", "cuda:0 (NVIDIA H100 80GB HBM3)"."""
        if self.device.type != "cuda":
            return str(self.device)
        return f"{self.device} ({torch.cuda.get_device_name(self.device)})"

    def describe(self) -> dict:
        """For reports, manifests and metadata: {"device": "cpu", "dtype": "float32", "why": ...}."""
        return {"device": str(self.device), "dtype": self.dtype_name, "why": self.why}

    def __str__(self) -> str:
        return f"{self.device} {self.dtype_name} ({self.why})"


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return frozenset()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def _device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ComputeError(
                f"compute.device={setting!r} but this torch sees no CUDA "
                "GPU: use device auto or cpu, or run on a GPU host."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ComputeError(
                f"compute.device={setting!r} but this host has {torch.cuda.device_count()} GPU(s): choose cuda:0 "
                f"to cuda:{torch.cuda.device_count() - 1}."
            )
    return device


def _auto_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA GPU with bf16"
        return torch.float16, "CUDA GPU without bf16"
    if cpu_has_native_bf16():
        return torch.bfloat16, "CPU multiplies bf16 natively (AVX512_BF16/AMX)"
    return torch.float32, "CPU has no native bf16: bf16 matmuls would be emulated"


def resolve(compute: Compute = Compute()) -> Resolved:
    device = _device(compute.device)
    if compute.dtype != "auto":
        return Resolved(device, DTYPES[compute.dtype], "set explicitly")
    dtype, why = _auto_dtype(device)
    return Resolved(device, dtype, why)
