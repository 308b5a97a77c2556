"""Dated result files: each benchmark writes what it measured, on which host and which code, to
bench/results/NAME-DATE-COMMIT.json. The README and docs quote these files, never remembered numbers."""

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from awq_core.compute import cpu_flags, cpu_has_native_bf16

RESULTS = Path(__file__).parent / "results"


def commit() -> str:
    """This checkout's short commit, with "-dirty" where tracked files differ from it; "unknown" where
    there is no git or no repository (the GPU machine gets a copy of the tree)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], capture_output=True).returncode != 0
    except OSError:
        return "unknown"
    return head + ("-dirty" if dirty else "") if head else "unknown"


# Read when a benchmark starts, so files edited while it runs do not change what it reports.
RUN_COMMIT = commit()


def cpu_kind() -> str:
    """The CPU as the suite's two machine kinds tell them apart, from the flags awq_core.compute
    decides precision by: "AVX-512 BF16", "AVX-512" or "AVX2"."""
    flags = cpu_flags()
    if cpu_has_native_bf16():
        return "AVX-512 BF16"
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other"


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = (line.partition(":")[2].strip() for line in lines if line.startswith("model name"))
    return next(names, platform.processor())


def host() -> dict:
    """What the figures were measured on."""
    model = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": model, "cpu_kind": cpu_kind(), "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__}


def result_path(name: str, code: str, day: datetime.date | None = None) -> Path:
    return RESULTS / f"{name}-{(day or datetime.date.today()).isoformat()}-{code}.json"


def write_result(name: str, settings: dict, figures: dict) -> Path:
    """One benchmark run: its settings and figures with the date, commit and host; returns the file."""
    code = RUN_COMMIT
    result = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": code,
        "host": host(),
        "settings": settings,
        "figures": figures,
    }
    path = result_path(name, code)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"results: {path}")
    return path
