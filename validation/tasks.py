"""Stage 2: accuracy on the user's task sets, item by item, candidate against baseline.

A task is a JSONL file, one item a line:
  multiple choice {"question": str, "choices": [str, ...], "answer": index}
      scored by log-likelihood as lm-evaluation-harness does: context "Question: ...\\nAnswer:",
      continuation " " + choice; acc takes the highest total log-likelihood, acc_norm the highest
      log-likelihood per character of the choice.
  generation      {"prompt": str, "answer": str or [str, ...], "match": "exact" | "contains"}
      the prompt goes through the model's chat template, greedy decoding, then the match.
"""

import bisect
import itertools
import json
import math
import string
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from awq_core.checkpoint import load_tokenizer
from awq_core.compute import Resolved, resolve
from awq_release.errors import ValidationError
from awq_release.texts import window_prefix
from validation.evidence import paired_mean, z_score
from validation.memo import Known
from validation.models import Units, measure_both, stopped_early
from validation.result import Inconclusive, Metric, StageResult, gate
from validation.scoring import Engines, Progress, Request, Scorer, as_scorer, no_progress
from validation.settings import TaskSettings, TaskSpec

TARGET_DELIMITER = " "
UNTIL_FAILED_BATCHES = 2  # batches of items a candidate measured until_failed is scored in between looks


@dataclass(frozen=True)
class MultipleChoice:
    question: str
    choices: tuple[str, ...]
    answer: int

    @property
    def context(self) -> str:
        return f"Question: {self.question}\nAnswer:"


@dataclass(frozen=True)
class Generation:
    prompt: str
    answers: tuple[str, ...]
    match: str  # "exact" or "contains"


Item = MultipleChoice | Generation


def _parse_item(record, where: str) -> Item:
    if not isinstance(record, dict):
        raise ValidationError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    if "choices" in record:
        choices, answer = record.get("choices"), record.get("answer")
        if (
            not isinstance(record.get("question"), str)
            or not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) for c in choices)
        ):
            raise ValidationError(
                f"{where}: a multiple-choice item needs a 'question' string and at least two 'choices' strings."
            )
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ValidationError(
                f"{where}: 'answer' must be the index of the right choice (0..{len(choices) - 1}), got {answer!r}."
            )
        return MultipleChoice(record["question"], tuple(choices), answer)
    if "prompt" in record:
        answers = record.get("answer")
        answers = [answers] if isinstance(answers, str) else answers
        match = record.get("match", "contains")
        if (
            not isinstance(record["prompt"], str)
            or not answers
            or not all(isinstance(a, str) and a.strip() for a in answers)
        ):
            raise ValidationError(
                f"{where}: a generation item needs a 'prompt' string "
                "and a non-empty 'answer' (string or list of strings)."
            )
        if match not in ("exact", "contains"):
            raise ValidationError(f"{where}: 'match' must be 'exact' or 'contains', got {match!r}.")
        return Generation(record["prompt"], tuple(answers), match)
    raise ValidationError(
        f"{where}: an item needs 'choices' (multiple choice) or 'prompt' (generation); found keys {sorted(record)}."
    )


def load_task(path: str | Path) -> list[Item]:
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"Task file {path} does not exist.")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValidationError(f"{path}:{lineno} is not valid JSON ({e.msg}).") from e
            items.append(_parse_item(record, f"{path}:{lineno}"))
    if not items:
        raise ValidationError(f"Task file {path} has no items.")
    return items


def _encode_pair(tokenizer, prefix: list[int], context: str, continuation: str) -> tuple[list[int], list[int]]:
    """As lm-evaluation-harness: trailing spaces move to the continuation; the continuation's tokens
    are what the whole string adds after the context's tokens; the context starts with `prefix`
    (the window prefix: BOS for Gemma, as the harness adds it there)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return prefix + context_ids, whole[len(context_ids) :]


def loglikelihoods(
    model: nn.Module | Scorer, tokenizer, pairs: list[tuple[str, str]], batch_size: int, done: Progress = no_progress
) -> list[float]:
    """Sum of log p(continuation | context) for each (context, continuation) string pair; `done`
    hears of each batch of pairs scored."""
    prefix = window_prefix(tokenizer)
    encoded = [_encode_pair(tokenizer, prefix, c, x) for c, x in pairs]
    requests = [Request(tuple(ctx + cont), len(ctx)) for ctx, cont in encoded]
    return [sum(s.logprobs) for s in as_scorer(model).score(requests, batch_size, done)]


def score_multiple_choice(
    model: nn.Module | Scorer, tokenizer, items: list[MultipleChoice], batch_size: int, advance: Progress = no_progress
) -> dict[str, list[int]]:
    pairs = [(item.context, TARGET_DELIMITER + choice) for item in items for choice in item.choices]
    last_pair = list(itertools.accumulate(len(item.choices) for item in items))  # of each item, counted from 1
    pairs_scored = items_done = 0

    def pairs_done(n: int) -> None:  # an item is scored once all its choices are
        nonlocal pairs_scored, items_done
        pairs_scored += n
        now = bisect.bisect_right(last_pair, pairs_scored)
        advance(now - items_done)
        items_done = now

    lls = iter(loglikelihoods(model, tokenizer, pairs, batch_size, pairs_done))
    acc, acc_norm = [], []
    for item in items:
        ll = [next(lls) for _ in item.choices]
        normed = [v / len(choice) for v, choice in zip(ll, item.choices, strict=True)]
        acc.append(int(max(range(len(ll)), key=ll.__getitem__) == item.answer))
        acc_norm.append(int(max(range(len(normed)), key=normed.__getitem__) == item.answer))
    return {"acc": acc, "acc_norm": acc_norm}


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split()).strip(string.punctuation + " ")


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A user turn as the model's chat template renders it, ready for the reply; a base model without
    a template gets the prompt as plain text after its window prefix (the stage warns of it)."""
    if tokenizer.chat_template is None:
        return window_prefix(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def score_generation(
    model: nn.Module | Scorer,
    tokenizer,
    items: list[Generation],
    batch_size: int,
    max_new_tokens: int,
    advance: Progress = no_progress,
) -> dict[str, list[int]]:
    requests = [
        Request(tuple(ids), len(ids), max_new_tokens) for ids in (prompt_ids(tokenizer, i.prompt) for i in items)
    ]
    correct = []
    for item, scored in zip(items, as_scorer(model).score(requests, batch_size, advance), strict=True):
        reply = _normalise(tokenizer.decode(scored.generated, skip_special_tokens=True))
        answers = [_normalise(a) for a in item.answers]
        correct.append(int(any(reply == a if item.match == "exact" else a in reply for a in answers)))
    return {"match": correct}


def score(
    model: nn.Module | Scorer, tokenizer, items: list[Item], settings: TaskSettings, advance: Progress = no_progress
) -> dict[str, list[int]]:
    """Per-item 0/1 correctness for every metric of the task (a task holds one kind of item);
    `advance` hears of each batch of items scored."""
    if all(isinstance(i, MultipleChoice) for i in items):
        return score_multiple_choice(model, tokenizer, items, settings.batch_size, advance)
    if all(isinstance(i, Generation) for i in items):
        return score_generation(model, tokenizer, items, settings.batch_size, settings.max_new_tokens, advance)
    raise ValidationError("A task file mixes multiple-choice and generation items: split it into one file per kind.")


def paired_drop(baseline: list[int], candidate: list[int], confidence: float = 0.95) -> dict[str, float]:
    """Accuracy drop (baseline - candidate) with its interval from the per-item differences, also
    relative to the baseline's accuracy (what the gate limits)."""
    n = len(baseline)
    drop, low, high = paired_mean([b - c for b, c in zip(baseline, candidate, strict=True)], confidence)
    base_acc = sum(baseline) / n
    scale = base_acc or 1.0  # a baseline that gets nothing right: the absolute drop
    return {
        "n": n,
        "baseline": base_acc,
        "candidate": sum(candidate) / n,
        "drop": drop,
        "ci_low": low,
        "ci_high": high,
        "relative_drop": drop / scale,
        "relative_ci_low": low / scale,
        "relative_ci_high": high / scale,
    }


def kindest_completion(baseline: list[int], partial: list[int], confidence: float) -> list[int]:
    """The candidate's `partial` first scores, completed over the remaining items so that the drop's
    interval has the lowest bound any completion gives: if that one fails its gate, every one does,
    the full measurement included. A completion scores k1 of the remaining items the baseline got
    right and k0 of those it got wrong (only the counts move the interval), so every (k1, k0) is tried."""
    rest = baseline[len(partial) :]
    right = [i for i, b in enumerate(rest) if b]
    wrong = [i for i, b in enumerate(rest) if not b]
    known = [b - c for b, c in zip(baseline, partial, strict=False)]
    k1, k0 = np.meshgrid(np.arange(len(right) + 1), np.arange(len(wrong) + 1), indexing="ij")
    plus, minus = known.count(1) + len(right) - k1, known.count(-1) + k0  # diffs of +1 and -1
    n = len(baseline)
    mean = (plus - minus) / n
    variance = np.maximum(plus + minus - n * mean**2, 0) / max(n - 1, 1)
    low = mean - z_score(confidence) * np.sqrt(variance / n)
    best_k1, best_k0 = np.unravel_index(np.argmin(low), low.shape)
    completion = [0] * len(rest)
    for i in right[:best_k1] + wrong[:best_k0]:
        completion[i] = 1
    return list(partial) + completion


def threshold_of(spec: TaskSpec, settings: TaskSettings) -> tuple[float, Inconclusive]:
    """A task's own threshold and inconclusive rule, else the critical or the general ones."""
    threshold = (
        spec.max_drop
        if spec.max_drop is not None
        else (settings.max_drop_critical if spec.critical else settings.max_drop)
    )
    inconclusive = spec.inconclusive or ("fail" if spec.critical else settings.evidence.inconclusive)
    return threshold, inconclusive


def task_gate(
    name: str, spec: TaskSpec, per_metric: dict[str, dict], settings: TaskSettings
) -> tuple[Metric, str | None]:
    """The task's gate on its relative drop in acc (multiple choice) or match (generation), and a
    warning where the interval is too wide for the threshold to be resolved."""
    gated = "acc" if "acc" in per_metric else "match"
    stats = per_metric[gated]
    threshold, inconclusive = threshold_of(spec, settings)
    interval = (stats["relative_ci_low"], stats["relative_ci_high"])
    metric = gate(
        f"{name} {gated} relative drop{' (critical)' if spec.critical else ''}",
        stats["baseline"],
        stats["candidate"],
        stats["relative_drop"],
        threshold,
        interval=interval,
        inconclusive=inconclusive,
    )
    half = (interval[1] - interval[0]) / 2
    if half < threshold / 2:
        return metric, None
    # A candidate that loses half the threshold would likely come out inconclusive.
    needed = math.ceil(stats["n"] * (2 * half / threshold) ** 2)
    return metric, (
        f"{name}: {stats['n']} items put a ±{half:.1%} {settings.evidence.confidence:.0%} interval on the "
        f"relative drop, too wide for its {threshold:.0%} threshold; about {needed} items would narrow it to "
        f"±{threshold / 2:.0%}."
    )


def run(
    baseline: str | Path,
    candidate: str | Path,
    settings: TaskSettings = TaskSettings(),
    compute: Resolved | None = None,
    known: Known | None = None,
    until_failed: bool = False,
    engines: Engines | None = None,
) -> StageResult:
    start = time.perf_counter()
    compute = compute or resolve()
    engines = engines or Engines("transformers", compute)
    if not settings.tasks:
        raise ValidationError("The tasks stage has no task sets: list JSONL files under tasks.tasks.")
    tasks = {Path(spec.path).stem: (spec, load_task(spec.path)[: settings.limit]) for spec in settings.tasks}
    tokenizer = load_tokenizer(candidate)

    def measure(scorer: Scorer, role: str) -> Units:
        # Until a gate fails, the candidate is scored a few batches at a time: after each, its task's
        # figures so far, so that a task already certain to fail is not scored to its end.
        chunk = UNTIL_FAILED_BATCHES * settings.batch_size if until_failed and role == "candidate" else None
        total = sum(len(items) for _, items in tasks.values())
        with tqdm(total=total, desc=f"{role} tasks", unit="item", leave=False) as bar:
            for name, (_, items) in tasks.items():
                scores: dict[str, list[int]] = {}
                step = chunk or max(len(items), 1)
                for i in range(0, len(items), step):
                    part = score(scorer, tokenizer, items[i : i + step], settings, bar.update)
                    scores = {m: scores.get(m, []) + got for m, got in part.items()}
                    yield name, scores

    def drops(base: dict[str, list[int]], cand: dict[str, list[int]]) -> dict[str, dict]:
        """Each metric's drop; a task scored in part, at the kindest completion of the rest."""
        confidence = settings.evidence.confidence
        return {m: paired_drop(base[m], kindest_completion(base[m], cand[m], confidence), confidence) for m in base}

    def failed(name: str, base: dict, cand: dict) -> bool:
        return task_gate(name, tasks[name][0], drops(base, cand), settings)[0].verdict == "fail"

    scores, reused = measure_both(
        baseline, candidate, "tasks", settings, measure, compute, known, failed if until_failed else None, engines
    )

    measured = list(scores["candidate"])  # every task, unless until_failed stopped at a failed one
    metrics, warnings, details = [], stopped_early(measured, tasks), {}
    if tokenizer.chat_template is None and any(isinstance(i, Generation) for _, items in tasks.values() for i in items):
        warnings.append("the tokenizer has no chat template: generation prompts went to both models as plain text")
    for name in measured:
        spec, items = tasks[name]
        per_metric = drops(scores["baseline"][name], scores["candidate"][name])
        scored = len(next(iter(scores["candidate"][name].values())))
        if scored < len(items):
            warnings.append(
                f"{name}: {scored} of {len(items)} items scored; its gate is the smallest drop any scores of the "
                "others could give, and it failed"
            )
        metric, warning = task_gate(name, spec, per_metric, settings)
        metrics.append(metric)
        warnings += [warning] if warning else []
        details[name] = {
            "critical": spec.critical,
            "items": len(items),
            "metrics": per_metric,
            "per_item": {role: scores[role][name] for role in scores},
        }
    seconds = time.perf_counter() - start
    return StageResult("tasks", metrics, warnings, details, seconds, compute=engines.describe(), reused=reused)
