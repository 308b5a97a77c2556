"""Stage 4: load test through a real vLLM OpenAI-compatible server, gated on the user's SLA.

A small asyncio client streams /v1/completions at each concurrency level and measures, per
request, time to first token (TTFT), inter-token latency (ITL: gaps between streamed tokens) and
end-to-end latency; per level, P50/P90/P99 of each, output tokens per second and error rate.
Prompts are real text cut to `prompt_tokens`; `ignore_eos` fixes every output at `output_tokens`.
"""

import asyncio
import json
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from tqdm.auto import tqdm

from awq_core.checkpoint import load_tokenizer
from awq_core.compute import Resolved
from awq_release.errors import ServerError, ValidationError
from awq_release.texts import token_stream
from deploy.capability import vllm_awq_capability
from deploy.cluster import serve_on_cluster
from deploy.engine import Target, engine_args, engine_env, serving_target
from deploy.server import Server, check_port, connect, serve
from validation.result import Metric, StageResult, gate
from validation.settings import SLA, LoadSettings


@dataclass
class RequestTiming:
    ok: bool
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""


async def _one_request(
    session: aiohttp.ClientSession, server: Server, prompt: str, settings: LoadSettings
) -> RequestTiming:
    body = {
        "model": server.model,
        "prompt": prompt,
        "max_tokens": settings.output_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    arrivals, tokens = [], 0
    try:
        async with session.post(f"{server.base_url}/v1/completions", json=body) as reply:
            if reply.status != 200:
                return RequestTiming(False, error=f"HTTP {reply.status}: {(await reply.text())[:200]}")
            async for raw in reply.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                if any(choice.get("text") for choice in event.get("choices", [])):
                    arrivals.append(time.perf_counter())
    except (TimeoutError, aiohttp.ClientError) as e:
        return RequestTiming(False, error=f"{type(e).__name__}: {e}")
    if not arrivals:
        return RequestTiming(False, error="the stream carried no tokens")
    return RequestTiming(True, arrivals[0] - start, arrivals[-1] - start, list(np.diff(arrivals)), tokens)


async def _level(
    server: Server, prompts: list[str], concurrency: int, settings: LoadSettings
) -> tuple[list[RequestTiming], float]:
    limit = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s)

    async def bounded(session, prompt):
        async with limit:
            return await _one_request(session, server, prompt, settings)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.perf_counter()
        timings = await asyncio.gather(*(bounded(session, p) for p in prompts))
        return list(timings), time.perf_counter() - start


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}


def summarise(timings: list[RequestTiming], wall_s: float) -> dict:
    ok = [t for t in timings if t.ok]
    return {
        "requests": len(timings),
        "errors": len(timings) - len(ok),
        "error_rate": (len(timings) - len(ok)) / len(timings),
        "ttft_s": percentiles([t.ttft_s for t in ok]),
        "itl_s": percentiles([gap for t in ok for gap in t.itl_s]),
        "e2e_s": percentiles([t.e2e_s for t in ok]),
        "output_tokens_per_s": sum(t.output_tokens for t in ok) / wall_s,
        "first_errors": sorted({t.error for t in timings if not t.ok})[:3],
    }


def drive(server: Server, prompts: list[str], settings: LoadSettings) -> dict[int, dict]:
    """Every concurrency level, one after the other: level -> summary."""
    results = {}
    for concurrency in tqdm(settings.concurrency, desc="load test, concurrency levels", leave=False):
        timings, wall_s = asyncio.run(_level(server, prompts[: settings.requests_per_level], concurrency, settings))
        results[concurrency] = summarise(timings, wall_s)
    return results


def make_prompts(model_dir: str | Path, settings: LoadSettings) -> list[str]:
    if not settings.prompt_texts:
        raise ValidationError(
            "The load stage has no prompt text: set load.prompt_texts to texts like your users' prompts."
        )
    tokenizer = load_tokenizer(model_dir)
    stream = token_stream(tokenizer, list(settings.prompt_texts))
    n = settings.requests_per_level
    if stream.numel() < n * settings.prompt_tokens:
        raise ValidationError(
            f"load.prompt_texts hold {stream.numel()} tokens; {n} prompts of {settings.prompt_tokens} need "
            f"{n * settings.prompt_tokens}."
        )
    return [tokenizer.decode(stream[i * settings.prompt_tokens : (i + 1) * settings.prompt_tokens]) for i in range(n)]


def server_log(settings: LoadSettings, role: str) -> Path:
    return Path(settings.log_dir) / f"vllm-{role}.log"


def _server(model_dir: str | Path, role: str, settings: LoadSettings, target: Target) -> AbstractContextManager[Server]:
    """A server of `model_dir` as its release would start: a staging Deployment on the cluster, or a
    process on this host."""
    log, engine = server_log(settings, role), engine_args(model_dir, role, settings.serving, target)
    if settings.staging:
        return serve_on_cluster(engine, role, settings.staging, log)
    env = engine_env(settings.serving, target)
    return serve(engine, env, log, port=settings.port, startup_timeout_s=settings.startup_timeout_s)


def _serve_and_drive(
    model_dir: str | Path, role: str, prompts: list[str], settings: LoadSettings, target: Target
) -> dict[int, dict]:
    """Start vLLM on `model_dir` with the release's engine arguments and environment, and drive it."""
    with _server(model_dir, role, settings, target) as server:
        levels = drive(server, prompts, settings)
        failed_requests = any(level["errors"] for level in levels.values())
        # A server that died midway failed the stage, whatever its figures say.
        server.check_alive(wait_s=10.0 if failed_requests else 0.0)
        return levels


SLA_ROWS = (  # label, the level's figure, the SLA field that limits it, whether higher is better
    ("error rate", lambda level: level["error_rate"], "max_error_rate", False),
    ("TTFT p90 s", lambda level: level["ttft_s"]["p90"], "ttft_p90_s", False),
    ("ITL p90 s", lambda level: level["itl_s"]["p90"], "itl_p90_s", False),
    ("end-to-end p99 s", lambda level: level["e2e_s"]["p99"], "e2e_p99_s", False),
    ("output tokens/s", lambda level: level["output_tokens_per_s"], "min_output_tokens_per_s", True),
)


def sla_metrics(levels: dict[int, dict], sla: SLA, baseline_levels: dict[int, dict] | None = None) -> list[Metric]:
    return [
        gate(
            f"c={c} {label}",
            figure(baseline_levels[c]) if baseline_levels else None,
            figure(level),
            figure(level),
            getattr(sla, limit),
            higher,
        )
        for c, level in levels.items()
        for label, figure, limit, higher in SLA_ROWS
    ]


def _measure(
    baseline: str | Path,
    candidate: str | Path,
    prompts: list[str],
    settings: LoadSettings,
    details: dict,
    target: Target,
) -> tuple[dict, dict | None]:
    """The candidate's levels (and the baseline's, if asked) from a server started here or on the cluster."""
    details["log"] = str(server_log(settings, "candidate"))
    levels = _serve_and_drive(candidate, "candidate", prompts, settings, target)
    if not settings.compare_baseline:
        return levels, None
    details["baseline_log"] = str(server_log(settings, "baseline"))
    baseline_levels = _serve_and_drive(baseline, "baseline", prompts, settings, target)
    details["speedup"] = {
        c: levels[c]["output_tokens_per_s"] / baseline_levels[c]["output_tokens_per_s"] for c in levels
    }
    return levels, baseline_levels


def run(
    baseline: str | Path,
    candidate: str | Path,
    settings: LoadSettings = LoadSettings(),
    compute: Resolved | None = None,
) -> StageResult:
    """Serve the candidate (and, if asked, the baseline) here or as staging Deployments on the cluster
    (`settings.staging`), or drive `settings.endpoint`, and gate on the SLA. Where this host's vLLM
    cannot run AWQ the stage fails in seconds with the cause and the fixes, or is skipped if the
    policy says it is not required. A server that cannot start fails the stage with its log; a port
    already in use is an error. `compute` is vLLM's own business."""
    start = time.perf_counter()
    if settings.prompt_tokens + settings.output_tokens > settings.serving.max_model_len:
        raise ValidationError(
            f"prompt_tokens + output_tokens = {settings.prompt_tokens + settings.output_tokens} exceed "
            f"serving.max_model_len {settings.serving.max_model_len}."
        )
    if settings.endpoint and settings.compare_baseline:
        raise ValidationError(
            "load.compare_baseline serves the baseline on this host, "
            "load.endpoint drives a remote server: set only one."
        )
    if settings.endpoint and settings.staging:
        raise ValidationError(
            "load.endpoint drives a server that is already running, load.staging starts one on the cluster: "
            "set only one."
        )
    here = not (settings.endpoint or settings.staging)  # the servers run on this host
    if settings.port and here:
        check_port("127.0.0.1", settings.port)  # a setting to fix, whatever vLLM can do here
    prompts = make_prompts(candidate, settings)
    details: dict = {"client": "asyncio + aiohttp, streaming /v1/completions"}
    server = settings.endpoint or ("a staging Deployment" if settings.staging else "started on this host")
    engine = {"engine": "vLLM", "server": server}

    def result(**outcome) -> StageResult:
        return StageResult("load", seconds=time.perf_counter() - start, details=details, compute=engine, **outcome)

    capability = vllm_awq_capability() if here else None
    # The release is written for the hardware its load test ran on (deploy.engine.serving_target).
    target = engine["target"] = serving_target(settings.serving, capability.target if capability else None)
    if capability:
        engine["capability"] = capability.reason
        if not capability.runs_awq:
            return result(
                metrics=[], **({"error": capability.reason} if settings.required else {"skipped": capability.reason})
            )
    try:
        if settings.endpoint:
            levels, baseline_levels = drive(connect(settings.endpoint), prompts, settings), None
        else:
            levels, baseline_levels = _measure(baseline, candidate, prompts, settings, details, target)
    except ServerError as e:
        if "already in use" in str(e):
            raise
        return result(metrics=[], error=str(e))
    details |= {"levels": levels, "baseline_levels": baseline_levels}
    return result(metrics=sla_metrics(levels, settings.sla, baseline_levels))
