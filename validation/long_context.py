"""Stage 3: long context. At each length, one forward pass per document measures both:

  [fact: "the secret code is 4827"] [the document's own tokens ...] [question about the code]
  - perplexity of the document's final `target_tokens` given everything before them;
  - retrieval: greedy decoding after the question must reproduce the code planted at the start.

Gates: the candidate's perplexity degradation at every length, its growth from the shortest to
the longest length, and how many retrievals the candidate loses against the baseline.
"""

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from awq_core.checkpoint import load_tokenizer
from awq_core.compute import Resolved, resolve
from awq_release.errors import ValidationError
from validation.evidence import bootstrap_increases, percentile_interval
from validation.memo import Known
from validation.models import context_length, measure_both
from validation.result import StageResult, gate
from validation.settings import Evidence, LongContextSettings

DEFAULT_LENGTHS = (512, 2048, 4096, 8192)
ANSWER_TOKENS = 8
BLOCK_TOKENS = 16  # scored tokens per bootstrap unit


def lengths_for(settings: LongContextSettings, max_positions: int) -> tuple[list[int], list[str]]:
    """Configured lengths must fit the model; the default ones are capped at its context length."""
    if settings.lengths:
        too_long = [n for n in settings.lengths if n > max_positions]
        if too_long:
            raise ValidationError(
                f"Context lengths {too_long} exceed the model's {max_positions} "
                "positions: remove them from long_context.lengths."
            )
        return sorted(settings.lengths), []
    kept = [n for n in DEFAULT_LENGTHS if n <= max_positions]
    dropped = [n for n in DEFAULT_LENGTHS if n > max_positions]
    return kept, [f"lengths {dropped} skipped: the model has {max_positions} positions."] if dropped else []


FACT = "Remember this: the secret code is {code}.\n\n"
QUESTION = "\n\nQuestion: What is the secret code?\nAnswer: The secret code is"


@dataclass(frozen=True)
class Probe:
    ids: Tensor  # (length,) fact + document + question
    code: str
    target: tuple[int, int]  # the scored document tokens: ids[target[0] : target[1]]


def build_probe(tokenizer, document: list[int], length: int, target_tokens: int, rng: random.Random) -> Probe:
    code = str(rng.randint(1000, 9999))
    fact = tokenizer(FACT.format(code=code), add_special_tokens=False)["input_ids"]
    question = tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    body = document[: length - len(fact) - len(question)]
    if len(body) < target_tokens + 1:
        raise ValidationError(
            f"Length {length} leaves no room for {target_tokens} "
            "scored tokens: raise the length or lower target_tokens."
        )
    end = len(fact) + len(body)
    return Probe(torch.tensor(fact + body + question), code, (end - target_tokens, end))


@torch.no_grad()
def evaluate_probe(model: nn.Module, tokenizer, probe: Probe) -> tuple[list[float], bool]:
    """One prefill: the NLL of each target token, then greedy decoding of the answer from the cache."""
    device = next(model.parameters()).device
    start, end = probe.target
    keep = probe.ids.numel() - start + 1  # logits from the position that predicts ids[start]
    out = model(probe.ids[None].to(device), use_cache=True, logits_to_keep=keep)
    logits = out.logits[0].float()  # (keep, V); row j predicts ids[start + j]
    nll = F.cross_entropy(logits[: end - start], probe.ids[start:end].to(device), reduction="none").tolist()
    answer, past, next_token = [], out.past_key_values, logits[-1].argmax()
    for _ in range(ANSWER_TOKENS):
        answer.append(int(next_token))
        step = model(next_token.view(1, 1), past_key_values=past, use_cache=True)
        past, next_token = step.past_key_values, step.logits[0, -1].argmax()
    return nll, probe.code in tokenizer.decode(answer)


def summary(results: list[tuple[list[float], bool]]) -> dict:
    """One length's figures for one model: perplexity over all its scored tokens, retrievals."""
    nlls = [nll for token_nlls, _ in results for nll in token_nlls]
    return {
        "perplexity": math.exp(sum(nlls) / len(nlls)),
        "retrieved": sum(found for _, found in results),
        "probes": len(results),
    }


def paired_increases(
    baseline: list[tuple[list[float], bool]], candidate: list[tuple[list[float], bool]], evidence: Evidence
) -> np.ndarray:
    """Bootstrap samples of one length's perplexity increase. Units are blocks of BLOCK_TOKENS
    neighbouring scored tokens: a handful of probes is too few to resample, and neighbouring tokens'
    losses are correlated, so single tokens would understate the spread."""
    diffs, tokens = [], []
    for (base, _), (cand, _) in zip(baseline, candidate, strict=True):
        for i in range(0, len(base), BLOCK_TOKENS):
            diffs.append(sum(cand[i : i + BLOCK_TOKENS]) - sum(base[i : i + BLOCK_TOKENS]))
            tokens.append(len(base[i : i + BLOCK_TOKENS]))
    return bootstrap_increases(diffs, tokens, evidence.resamples)


def run(
    baseline: str | Path,
    candidate: str | Path,
    settings: LongContextSettings = LongContextSettings(),
    compute: Resolved | None = None,
    known: Known | None = None,
) -> StageResult:
    start = time.perf_counter()
    compute = compute or resolve()
    if not settings.texts:
        raise ValidationError(
            "The long_context stage has no documents: set long_context.texts to long texts of your domain."
        )
    lengths, warnings = lengths_for(settings, context_length(candidate))
    tokenizer = load_tokenizer(candidate)
    documents = sorted(
        (tokenizer(Path(p).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"] for p in settings.texts),
        key=len,
        reverse=True,
    )
    probes = {}
    rng = random.Random(0)
    for length in lengths:
        fitting = [d for d in documents if len(d) >= length][: settings.documents]
        if not fitting:
            raise ValidationError(
                f"No long_context text reaches {length} tokens (the longest has {len(documents[0])}): add longer "
                "documents or drop that length."
            )
        probes[length] = [build_probe(tokenizer, d, length, settings.target_tokens, rng) for d in fitting]

    def measure(model: nn.Module, role: str) -> dict[str, list[tuple[list[float], bool]]]:
        return {  # keyed by the length as text, as figures are kept (validation.memo.plain)
            str(length): [evaluate_probe(model, tokenizer, probe) for probe in probes[length]]
            for length in tqdm(lengths, desc=f"{role} long context", leave=False)
        }

    measured, reused = measure_both(baseline, candidate, "long_context", settings, measure, compute, known)
    results = {role: {n: by_length[str(n)] for n in lengths} for role, by_length in measured.items()}
    figures = {role: {n: summary(by_length[n]) for n in lengths} for role, by_length in results.items()}
    evidence = settings.evidence
    increases = {n: paired_increases(results["baseline"][n], results["candidate"][n], evidence) for n in lengths}
    degradation = {n: figures["candidate"][n]["perplexity"] / figures["baseline"][n]["perplexity"] - 1 for n in lengths}
    metrics = [
        gate(
            f"perplexity increase at {n} tokens",
            figures["baseline"][n]["perplexity"],
            figures["candidate"][n]["perplexity"],
            degradation[n],
            settings.max_degradation,
            interval=percentile_interval(increases[n], evidence.confidence),
            inconclusive=evidence.inconclusive,
        )
        for n in lengths
    ]
    shortest, longest = lengths[0], lengths[-1]
    metrics.append(
        gate(
            f"degradation growth {shortest} -> {longest} tokens",
            degradation[shortest],
            degradation[longest],
            degradation[longest] - degradation[shortest],
            settings.max_growth,
            interval=percentile_interval(increases[longest] - increases[shortest], evidence.confidence),
            inconclusive=evidence.inconclusive,
        )
    )
    total = sum(f["probes"] for f in figures["baseline"].values())
    retrieved = {role: sum(f["retrieved"] for f in figures[role].values()) / total for role in figures}
    metrics.append(
        gate(
            "retrieval accuracy lost",
            retrieved["baseline"],
            retrieved["candidate"],
            retrieved["baseline"] - retrieved["candidate"],
            settings.max_retrieval_drop,
        )
    )
    details = {
        "lengths": lengths,
        "by_length": figures,
        "degradation": degradation,
        "interval": f"{evidence.confidence:.0%} percentile bootstrap over blocks of {BLOCK_TOKENS} scored tokens, "
        "paired; retrieval: the point estimate",
    }
    return StageResult(
        "long_context",
        metrics,
        warnings,
        details,
        time.perf_counter() - start,
        compute=compute.describe(),
        reused=reused,
    )
