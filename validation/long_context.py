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
from torch import Tensor, nn
from tqdm.auto import tqdm

from awq_core.checkpoint import load_tokenizer
from awq_core.compute import Resolved, resolve
from awq_release.errors import ValidationError
from validation.evidence import bootstrap_increases, percentile_interval
from validation.memo import Known
from validation.models import Units, measure_both, stopped_early
from validation.result import Metric, StageResult, gate
from validation.scoring import Engines, Request, Scorer, as_scorer, context_length
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


def probe_requests(probes: list[Probe]) -> list[Request]:
    """One request a probe: the scored tokens' log-probabilities and the greedy answer, in one prefill."""
    return [Request(tuple(probe.ids.tolist()), probe.target[0], ANSWER_TOKENS) for probe in probes]


def evaluate_probes(model: nn.Module | Scorer, tokenizer, probes: list[Probe]) -> list[tuple[list[float], bool]]:
    """(the NLL of each target token, whether the answer holds the code) of each probe."""
    scored = as_scorer(model).score(probe_requests(probes), batch_size=1)
    return [
        ([-lp for lp in s.logprobs[: probe.target[1] - probe.target[0]]], probe.code in tokenizer.decode(s.generated))
        for probe, s in zip(probes, scored, strict=True)
    ]


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


def length_gate(
    length: int,
    baseline: list[tuple[list[float], bool]],
    candidate: list[tuple[list[float], bool]],
    settings: LongContextSettings,
) -> Metric:
    """The candidate's perplexity degradation at one length, over its probes' scored tokens."""
    base, cand = summary(baseline)["perplexity"], summary(candidate)["perplexity"]
    return gate(
        f"perplexity increase at {length} tokens",
        base,
        cand,
        cand / base - 1,
        settings.max_degradation,
        interval=percentile_interval(
            paired_increases(baseline, candidate, settings.evidence), settings.evidence.confidence
        ),
        inconclusive=settings.evidence.inconclusive,
    )


def range_gates(
    results: dict[str, dict[int, list[tuple[list[float], bool]]]],
    degradation: dict[int, float],
    settings: LongContextSettings,
) -> list[Metric]:
    """The gates over every length: the degradation's growth from the shortest to the longest, and
    the retrievals lost. results: role -> length -> its probes' (token NLLs, retrieved)."""
    lengths = sorted(degradation)
    evidence, shortest, longest = settings.evidence, lengths[0], lengths[-1]
    growth = paired_increases(results["baseline"][longest], results["candidate"][longest], evidence) - (
        paired_increases(results["baseline"][shortest], results["candidate"][shortest], evidence)
    )
    probes = [found for n in lengths for _, found in results["baseline"][n]]
    retrieved = {
        role: sum(found for n in lengths for _, found in by_length[n]) / len(probes)
        for role, by_length in results.items()
    }
    return [
        gate(
            f"degradation growth {shortest} -> {longest} tokens",
            degradation[shortest],
            degradation[longest],
            degradation[longest] - degradation[shortest],
            settings.max_growth,
            interval=percentile_interval(growth, evidence.confidence),
            inconclusive=evidence.inconclusive,
        ),
        gate(
            "retrieval accuracy lost",
            retrieved["baseline"],
            retrieved["candidate"],
            retrieved["baseline"] - retrieved["candidate"],
            settings.max_retrieval_drop,
        ),
    ]


def run(
    baseline: str | Path,
    candidate: str | Path,
    settings: LongContextSettings = LongContextSettings(),
    compute: Resolved | None = None,
    known: Known | None = None,
    until_failed: bool = False,
    engines: Engines | None = None,
) -> StageResult:
    start = time.perf_counter()
    compute = compute or resolve()
    engines = engines or Engines("transformers", compute)
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

    def measure(scorer: Scorer, role: str) -> Units:
        for length in tqdm(lengths, desc=f"{role} long context", leave=False):  # the shortest, cheapest first
            # keyed by the length as text, as figures are kept (validation.memo.plain)
            yield str(length), evaluate_probes(scorer, tokenizer, probes[length])

    def failed(length: str, base: list, cand: list) -> bool:
        return length_gate(int(length), base, cand, settings).verdict == "fail"

    measured, reused = measure_both(
        baseline,
        candidate,
        "long_context",
        settings,
        measure,
        compute,
        known,
        failed if until_failed else None,
        engines,
    )
    done = [int(n) for n in measured["candidate"]]  # every length, unless until_failed stopped at a failed one
    warnings += stopped_early([str(n) for n in done], lengths)
    results = {role: {n: by_length[str(n)] for n in done} for role, by_length in measured.items()}
    metrics = [length_gate(n, results["baseline"][n], results["candidate"][n], settings) for n in done]
    degradation = {n: metric.value for n, metric in zip(done, metrics, strict=True)}
    if done == lengths:  # the gates over all lengths
        metrics += range_gates(results, degradation, settings)
    details = {
        "lengths": lengths,
        "by_length": {role: {n: summary(by_length[n]) for n in done} for role, by_length in results.items()},
        "degradation": degradation,
        "interval": f"{settings.evidence.confidence:.0%} percentile bootstrap over blocks of {BLOCK_TOKENS} scored "
        "tokens, paired; retrieval: the point estimate",
    }
    return StageResult(
        "long_context",
        metrics,
        warnings,
        details,
        time.perf_counter() - start,
        compute=engines.describe(),
        reused=reused,
    )
