"""Stage 1: sliding-window perplexity on the user's held-out domain text and on general text."""

import math
import time
from pathlib import Path

from torch import Tensor, nn
from tqdm.auto import tqdm

from awq_core.checkpoint import load_tokenizer
from awq_core.compute import Resolved, resolve
from awq_release.errors import ValidationError
from awq_release.texts import token_stream, window_prefix
from validation.evidence import bootstrap_increases, increase, percentile_interval
from validation.memo import Known
from validation.models import Units, measure_both, stopped_early
from validation.result import Metric, StageResult, gate
from validation.scoring import Engines, Request, Scorer, as_scorer
from validation.settings import PerplexitySettings


def window_requests(ids: Tensor, seqlen: int, stride: int, prefix: list[int] | None = None) -> list[Request]:
    """Windows of `seqlen` (`prefix`, the tokenizer's window prefix, then text) over ids (T,), starting
    every `stride` tokens of text; the first window scores all its text it can, later ones only
    their last `stride` tokens, each with >= seqlen - stride of context, so every token is scored once."""
    head = prefix or []
    width = seqlen - len(head)  # text tokens per window
    if ids.numel() < width:
        raise ValidationError(
            f"{ids.numel()} tokens are fewer than one window of {seqlen}: give more text or a shorter window."
        )
    text = ids.tolist()
    return [
        Request(tuple(head + text[s : s + width]), 1 if s == 0 else max(seqlen - stride, 1))
        for s in range(0, ids.numel() - width + 1, stride)
    ]


def window_nlls(
    model: nn.Module | Scorer,
    ids: Tensor,
    seqlen: int = 512,
    stride: int = 256,
    batch_size: int = 4,
    desc: str | None = None,
    prefix: list[int] | None = None,
) -> list[tuple[float, int]]:
    """(summed NLL, tokens) of each window over ids (T,), windows as window_requests makes them."""
    requests = window_requests(ids, seqlen, stride, prefix)
    with tqdm(total=len(requests), desc=desc, disable=desc is None, leave=False) as bar:
        scored = as_scorer(model).score(requests, batch_size, bar.update)
    return [(-sum(s.logprobs), len(s.logprobs)) for s in scored]


def pooled_perplexity(windows: list[tuple[float, int]]) -> float:
    """exp(mean NLL) over every token the windows scored."""
    return math.exp(sum(nll for nll, _ in windows) / sum(tokens for _, tokens in windows))


def perplexity(
    model: nn.Module | Scorer, ids: Tensor, seqlen: int = 512, stride: int = 256, prefix: list[int] | None = None
) -> float:
    """exp(mean NLL) over ids (T,), windows as in window_nlls."""
    return pooled_perplexity(window_nlls(model, ids, seqlen, stride, prefix=prefix))


def increase_gate(
    name: str, baseline: list[tuple[float, int]], candidate: list[tuple[float, int]], settings: PerplexitySettings
) -> Metric:
    """The relative perplexity increase over the same windows, with a bootstrap interval over them."""
    diffs = [c - b for (b, _), (c, _) in zip(baseline, candidate, strict=True)]
    tokens = [n for _, n in baseline]
    samples = bootstrap_increases(diffs, tokens, settings.evidence.resamples)
    return gate(
        f"{name} perplexity increase",
        pooled_perplexity(baseline),
        pooled_perplexity(candidate),
        increase(sum(diffs), sum(tokens)),
        settings.max_increase,
        interval=percentile_interval(samples, settings.evidence.confidence),
        inconclusive=settings.evidence.inconclusive,
    )


def run(
    baseline: str | Path,
    candidate: str | Path,
    settings: PerplexitySettings = PerplexitySettings(),
    compute: Resolved | None = None,
    known: Known | None = None,
    until_failed: bool = False,
    engines: Engines | None = None,
) -> StageResult:
    start = time.perf_counter()
    compute = compute or resolve()
    engines = engines or Engines("transformers", compute)
    sources = {
        name: files for name, files in (("domain", settings.domain_texts), ("general", settings.general_texts)) if files
    }
    if not sources:
        raise ValidationError(
            "The perplexity stage has no text: set perplexity.domain_texts (held out from calibration) and/or "
            "perplexity.general_texts."
        )
    tokenizer = load_tokenizer(candidate)
    streams = {name: token_stream(tokenizer, list(files))[: settings.max_tokens] for name, files in sources.items()}
    prefix = window_prefix(tokenizer)

    def measure(scorer: Scorer, role: str) -> Units:
        for name, ids in streams.items():
            yield (
                name,
                window_nlls(scorer, ids, settings.seqlen, settings.stride, desc=f"{role} {name} ppl", prefix=prefix),
            )

    def failed(name: str, base: list, cand: list) -> bool:
        return increase_gate(name, base, cand, settings).verdict == "fail"

    windows, reused = measure_both(
        baseline, candidate, "perplexity", settings, measure, compute, known, failed if until_failed else None, engines
    )
    measured = list(windows["candidate"])  # every text, unless until_failed stopped at a failed one
    metrics = [
        increase_gate(name, windows["baseline"][name], windows["candidate"][name], settings) for name in measured
    ]
    details = {
        "tokens": {name: ids.numel() for name, ids in streams.items()},
        "windows": {name: len(w) for name, w in windows["baseline"].items()},
        "seqlen": settings.seqlen,
        "stride": settings.stride,
        "interval": f"{settings.evidence.confidence:.0%} percentile bootstrap over windows, paired",
    }
    seconds = time.perf_counter() - start
    return StageResult(
        "perplexity",
        metrics,
        stopped_early(measured, streams),
        details,
        seconds,
        compute=engines.describe(),
        reused=reused,
    )
