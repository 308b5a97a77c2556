"""Stage 1: sliding-window perplexity on the user's held-out domain text and on general text."""

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
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
from validation.settings import PerplexitySettings


@torch.no_grad()
def window_nlls(
    model: nn.Module,
    ids: Tensor,
    seqlen: int = 512,
    stride: int = 256,
    batch_size: int = 4,
    desc: str | None = None,
    prefix: list[int] | None = None,
) -> list[tuple[float, int]]:
    """(summed NLL, tokens) of each window over ids (T,). Windows of `seqlen` (`prefix`, the
    tokenizer's window prefix, then text) start every `stride` tokens of text; the first window
    scores all its text it can, later ones only their last `stride` tokens, each with >= seqlen -
    stride of context, so every token is scored once."""
    head = torch.tensor(prefix or [], dtype=ids.dtype)
    width = seqlen - len(head)  # text tokens per window
    if ids.numel() < width:
        raise ValidationError(
            f"{ids.numel()} tokens are fewer than one window of {seqlen}: give more text or a shorter window."
        )
    starts = list(range(0, ids.numel() - width + 1, stride))
    device = next(model.parameters()).device
    windows = []
    for i in tqdm(range(0, len(starts), batch_size), desc=desc, disable=desc is None, leave=False):
        batch = torch.stack([torch.cat([head, ids[s : s + width]]) for s in starts[i : i + batch_size]]).to(device)
        # Only the first window scores every token; the others need logits for their last `stride`
        # tokens alone, which saves most of the vocabulary-sized projection and softmax.
        keep = 0 if starts[i] == 0 else stride + 1  # 0: every position
        logits = model(batch, logits_to_keep=keep).logits[:, :-1]  # (B, P, V) predicts the last P tokens
        targets = batch[:, -logits.shape[1] :].clone()  # (B, P)
        if starts[i] == 0:
            for row, start in enumerate(starts[i : i + batch_size]):
                if start > 0:
                    targets[row, : seqlen - 1 - stride] = -100  # scored by the previous window
        nll = F.cross_entropy(
            logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )  # (B, P), 0 where ignored
        windows += zip(nll.sum(dim=1).tolist(), (targets != -100).sum(dim=1).tolist(), strict=True)
    return windows


def pooled_perplexity(windows: list[tuple[float, int]]) -> float:
    """exp(mean NLL) over every token the windows scored."""
    return math.exp(sum(nll for nll, _ in windows) / sum(tokens for _, tokens in windows))


def perplexity(
    model: nn.Module, ids: Tensor, seqlen: int = 512, stride: int = 256, prefix: list[int] | None = None
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
) -> StageResult:
    start = time.perf_counter()
    compute = compute or resolve()
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

    def measure(model: nn.Module, role: str) -> Units:
        for name, ids in streams.items():
            yield (
                name,
                window_nlls(model, ids, settings.seqlen, settings.stride, desc=f"{role} {name} ppl", prefix=prefix),
            )

    def failed(name: str, base: list, cand: list) -> bool:
        return increase_gate(name, base, cand, settings).verdict == "fail"

    windows, reused = measure_both(
        baseline, candidate, "perplexity", settings, measure, compute, known, failed if until_failed else None
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
        compute=compute.describe(),
        reused=reused,
    )
