"""Can this host's vLLM serve a 4-bit AWQ checkpoint? Known in seconds, before any server starts.

vLLM serves AWQ on CUDA, and on CPU through its W4A16 op `cpu_gemm_wna16`, which only its AVX-512
builds carry. On an AVX2-only CPU the server starts, reports healthy, and its engine dies on the
first request; this probe finds that out up front. It runs in a child process, so importing vLLM
(and its choice of kernel library) never touches the caller's process.
"""

import json
import subprocess
import sys
from dataclasses import dataclass
from functools import cache

from deploy.engine import Target

PROBE_TIMEOUT_S = 120.0

# Run by the child: vLLM's platform picks and loads its kernel library exactly as a server would.
PROBE = """
import json, torch
try:
    from vllm.platforms import current_platform
except ImportError as e:
    print(json.dumps({"installed": False, "detail": str(e)})); raise SystemExit
found = {"installed": True, "platform": type(current_platform).__name__, "cuda": current_platform.is_cuda()}
if not found["cuda"] and current_platform.is_cpu():
    current_platform.import_kernels()
    found["cpu_w4a16"] = hasattr(torch.ops._C, "cpu_gemm_wna16")
    found["isa"] = "AVX512" if torch.cpu._is_avx512_supported() else "AVX2"
print(json.dumps(found))
"""

FIXES = (
    "run the load stage on a GPU host (AWQ_RELEASE_ENGINE=gpu bash scripts/setup.sh installs CUDA vLLM), "
    "or on a CPU with AVX-512; or point load.endpoint at an OpenAI-compatible server already serving the candidate "
    "(a staging deployment on the target GPU); or, where the policy "
    "accepts it, set load.required: false to record the stage as skipped"
)


@dataclass(frozen=True)
class Capability:
    runs_awq: bool
    reason: str  # what was found; with the fixes when vLLM cannot run AWQ here
    target: Target | None = None  # the hardware this host's vLLM serves on; None: no usable vLLM


def capability_from(found: dict) -> Capability:
    """The verdict on what the probe found (pure: tested with every kind of host)."""
    if not found.get("installed"):
        return Capability(
            False, f"vLLM is not installed in this environment ({found.get('detail', 'import failed')}): {FIXES}."
        )
    if found.get("cuda"):
        return Capability(True, "vLLM on CUDA serves AWQ checkpoints", "gpu")
    if found.get("cpu_w4a16"):
        return Capability(
            True, f"vLLM's CPU build for {found.get('isa', 'this CPU')} has the W4A16 op cpu_gemm_wna16", "cpu"
        )
    if "cpu_w4a16" in found:
        return Capability(
            False,
            f"this host's vLLM ({found.get('platform')}, {found.get('isa')} build) has no 4-bit AWQ kernel "
            "(cpu_gemm_wna16 exists only in its AVX-512 build): a server "
            f"would start and die on the first request. Fix: {FIXES}.",
            "cpu",
        )
    return Capability(False, f"vLLM's platform here is {found.get('platform')}, which has no AWQ kernel: {FIXES}.")


@cache
def vllm_awq_capability() -> Capability:
    """Probe once per process (a child process imports vLLM: a few seconds)."""
    try:
        done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Capability(False, f"probing vLLM took over {PROBE_TIMEOUT_S:.0f} s: {FIXES}.")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Capability(False, f"vLLM failed to load its kernels ({tail}): {FIXES}.")
    return capability_from(json.loads(lines[-1]))
