"""Stage 1: sliding-window perplexity on the user's held-out domain text and on general text."""

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from awq_core.compute import Resolved, resolve
from awq_release.errors import ValidationError
from awq_release.texts import token_stream
from validation.models import load_model, load_tokenizer
from validation.result import StageResult, gate
from validation.settings import PerplexitySettings


@torch.no_grad()
def perplexity(
    model: nn.Module, ids: Tensor, seqlen: int = 512, stride: int = 256, batch_size: int = 4, desc: str | None = None
) -> float:
    """exp(mean NLL) over ids (T,). Windows of `seqlen` start every `stride` tokens; the first window
    scores all its tokens, later ones only their last `stride`, each with >= seqlen - stride of context."""
    if ids.numel() < seqlen:
        raise ValidationError(
            f"{ids.numel()} tokens are fewer than one window of {seqlen}: give more text or a shorter window."
        )
    starts = list(range(0, ids.numel() - seqlen + 1, stride))
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for i in tqdm(range(0, len(starts), batch_size), desc=desc, disable=desc is None, leave=False):
        batch = torch.stack([ids[s : s + seqlen] for s in starts[i : i + batch_size]]).to(device)  # (B, L)
        # Only the first window scores every token; the others need logits for their last `stride`
        # tokens alone, which saves most of the vocabulary-sized projection and softmax.
        keep = 0 if starts[i] == 0 else stride + 1  # 0: every position
        logits = model(batch, logits_to_keep=keep).logits[:, :-1]  # (B, P, V) predicts the last P tokens
        targets = batch[:, -logits.shape[1] :].clone()  # (B, P)
        if starts[i] == 0:
            for row, start in enumerate(starts[i : i + batch_size]):
                if start > 0:
                    targets[row, : seqlen - 1 - stride] = -100  # scored by the previous window
        nll += F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
        ).item()
        count += int((targets != -100).sum())
    return math.exp(nll / count)


def run(
    baseline: str | Path,
    candidate: str | Path,
    settings: PerplexitySettings = PerplexitySettings(),
    compute: Resolved | None = None,
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
    figures: dict[str, dict[str, float]] = {}
    for role, path in (("baseline", baseline), ("candidate", candidate)):
        model = load_model(path, compute)  # once per stage
        figures[role] = {
            name: perplexity(model, ids, settings.seqlen, settings.stride, desc=f"{role} {name} ppl")
            for name, ids in streams.items()
        }
        del model
    metrics = [
        gate(
            f"{name} perplexity increase",
            figures["baseline"][name],
            figures["candidate"][name],
            figures["candidate"][name] / figures["baseline"][name] - 1,
            settings.max_increase,
        )
        for name in streams
    ]
    details = {
        "tokens": {name: ids.numel() for name, ids in streams.items()},
        "seqlen": settings.seqlen,
        "stride": settings.stride,
    }
    return StageResult(
        "perplexity", metrics, details=details, seconds=time.perf_counter() - start, compute=compute.describe()
    )
