"""How the quality stages score a model: the log-probabilities of given tokens and greedy replies,
asked of one of two engines with the same requests.

- transformers (our loader for an AWQ candidate) on the compute device: ModelScorer;
- vLLM's OpenAI-compatible server, started with the release's own engine arguments (tensor
  parallel as it will be served): ServedScorer. What is validated is then what is served, and a
  model too big for one device is scored on the GPUs it will be served on.

Every stage builds Requests (a perplexity window, a choice after its question, a prompt to answer,
a long-context probe) and reads Scored replies, so its windows, items, intervals and gates are the
same whichever engine answered. `Engines` starts each model's engine once and keeps it for every
stage that scores that model.
"""

import asyncio
import json
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

import aiohttp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from awq_core.compute import Resolved
from awq_release.errors import ServerError, ValidationError
from deploy.capability import vllm_awq_capability
from deploy.engine import Serving, engine_args, engine_env, serving_target
from deploy.server import Server, serve

EngineName = Literal["transformers", "vllm"]
EngineChoice = Literal["auto", EngineName]
Progress = Callable[[int], None]  # told how many requests were scored since it was last told


def no_progress(_: int) -> None:
    pass


@dataclass(frozen=True)
class Request:
    ids: tuple[int, ...]  # the prompt
    scored_from: int  # log-probabilities of ids[scored_from:], each given the ids before it; len(ids): none
    new_tokens: int = 0  # greedy tokens after the prompt, up to the first end of sequence

    def __post_init__(self) -> None:
        if not 1 <= self.scored_from <= len(self.ids):
            raise ValueError(
                f"scored_from {self.scored_from} is outside 1..{len(self.ids)}: the first token has no context"
            )


@dataclass(frozen=True)
class Scored:
    logprobs: list[float]  # of request.ids[scored_from:]
    generated: list[int]  # the greedy reply, without its end-of-sequence token


class Scorer(Protocol):
    engine: EngineName

    def score(self, requests: Sequence[Request], batch_size: int, done: Progress = no_progress) -> list[Scored]: ...


def context_length(model_dir: str | Path) -> int:
    return int(json.loads((Path(model_dir) / "config.json").read_text()).get("max_position_embeddings", 2048))


def end_of_sequence_ids(model_dir: str | Path) -> frozenset[int]:
    """The ids that end a reply: generation_config.json's, else config.json's (one id or a list)."""
    for name in ("generation_config.json", "config.json"):
        path = Path(model_dir) / name
        eos = json.loads(path.read_text()).get("eos_token_id") if path.is_file() else None
        if eos is not None:
            return frozenset(eos if isinstance(eos, list) else [eos])
    return frozenset()


def until_end(tokens: list[int], eos: frozenset[int]) -> list[int]:
    return next((tokens[:i] for i, t in enumerate(tokens) if t in eos), tokens)


# transformers: one batched forward for log-probabilities, generate() for replies, and one prefill
# followed by decoding from its cache where a request wants both (a long-context probe).


@torch.no_grad()
def prompt_logprobs(model: nn.Module, batch: Sequence[Request]) -> list[list[float]]:
    """Right-padded, so real tokens keep their positions; only positions from the earliest scored one
    on get logits (logits_to_keep), so long contexts cost no vocabulary-sized activations."""
    device = next(model.parameters()).device
    inputs = [r.ids[:-1] for r in batch]  # the last token predicts nothing that is scored
    width = max(map(len, inputs))
    ids = torch.zeros(len(inputs), width, dtype=torch.long)
    mask = torch.zeros(len(inputs), width, dtype=torch.long)
    for row, seq in enumerate(inputs):
        ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
    keep = width - min(r.scored_from for r in batch) + 1
    logits = model(ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep).logits  # (B, keep, V)
    logprobs = F.log_softmax(logits.float(), dim=-1)  # picked on the device: only the scored values leave it
    results = []
    for row, r in enumerate(batch):
        first = r.scored_from - 1 - (width - keep)  # the position predicting ids[scored_from], in kept coordinates
        positions = torch.arange(first, first + len(r.ids) - r.scored_from, device=device)
        targets = torch.tensor(r.ids[r.scored_from :], device=device)
        results.append(logprobs[row, positions, targets].tolist())
    return results


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token rows -> ids and attention mask (B, L), padded on the left so that generation continues
    every row from the right edge. The mask, not the pad id, keeps padding out of attention, so any
    id will do where the tokenizer has no pad token."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, seq in enumerate(rows):
        ids[row, width - len(seq) :], mask[row, width - len(seq) :] = torch.tensor(seq), 1
    return ids, mask


@torch.no_grad()
def greedy_replies(model: nn.Module, batch: Sequence[Request], pad_id: int, eos: frozenset[int]) -> list[list[int]]:
    device = next(model.parameters()).device
    ids, mask = left_padded([r.ids for r in batch], pad_id)
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max(r.new_tokens for r in batch),
        do_sample=False,
        pad_token_id=pad_id,
    )
    return [
        until_end(tokens.tolist()[: r.new_tokens], eos) for r, tokens in zip(batch, out[:, ids.shape[1] :], strict=True)
    ]


@torch.no_grad()
def scored_and_replied(model: nn.Module, request: Request, eos: frozenset[int]) -> Scored:
    """One prefill: the log-probabilities of ids[scored_from:], then greedy decoding from its cache."""
    device = next(model.parameters()).device
    ids = torch.tensor(request.ids, device=device)
    keep = len(request.ids) - request.scored_from + 1  # from the position that predicts ids[scored_from]
    out = model(ids[None], use_cache=True, logits_to_keep=keep)
    logprobs = F.log_softmax(out.logits[0].float(), dim=-1)  # (keep, V); row j predicts ids[scored_from + j]
    scored = logprobs[:-1].gather(1, ids[request.scored_from :, None])[:, 0].tolist()
    reply, past, next_token = [], out.past_key_values, logprobs[-1].argmax()
    while len(reply) < request.new_tokens and int(next_token) not in eos:
        reply.append(int(next_token))
        step = model(next_token.view(1, 1), past_key_values=past, use_cache=True)
        past, next_token = step.past_key_values, step.logits[0, -1].argmax()
    return Scored(scored, reply)


def kind(request: Request) -> tuple[bool, bool]:
    """(whether it asks for log-probabilities, whether it asks for a reply)"""
    return request.scored_from < len(request.ids), request.new_tokens > 0


@dataclass
class ModelScorer:
    model: nn.Module
    eos: frozenset[int] = frozenset()
    pad_id: int = 0
    engine: EngineName = "transformers"

    def score(self, requests: Sequence[Request], batch_size: int, done: Progress = no_progress) -> list[Scored]:
        """Requests of one kind go in batches of `batch_size`, in order; a request that wants both
        log-probabilities and a reply goes alone."""
        results: list[Scored] = []
        i = 0
        while i < len(requests):
            first = requests[i]
            scores, replies = kind(first)
            if scores and replies:
                results.append(scored_and_replied(self.model, first, self.eos))
                i += 1
                done(1)
                continue
            batch = []
            while i < len(requests) and len(batch) < batch_size and kind(requests[i]) == kind(first):
                batch.append(requests[i])
                i += 1
            if scores:
                results += [Scored(lp, []) for lp in prompt_logprobs(self.model, batch)]
            else:
                results += [Scored([], reply) for reply in greedy_replies(self.model, batch, self.pad_id, self.eos)]
            done(len(batch))
        return results


def as_scorer(model: "nn.Module | Scorer") -> Scorer:
    """A scorer, or a model scored through transformers (as the stages' functions take either)."""
    return ModelScorer(model) if isinstance(model, nn.Module) else model


# vLLM: /v1/completions with the prompt as token ids; prompt_logprobs=0 returns, for each prompt
# position after the first, the log-probability of the prompt's own token there.


def request_body(model: str, request: Request) -> dict:
    return {
        "model": model,
        "prompt": list(request.ids),
        "max_tokens": max(request.new_tokens, 1),  # vLLM decodes at least one token
        "temperature": 0.0,
        "return_token_ids": True,
        **({"prompt_logprobs": 0} if request.scored_from < len(request.ids) else {}),
    }


def scored_from_reply(request: Request, reply: dict, eos: frozenset[int]) -> Scored:
    """A /v1/completions reply read as the request asked: prompt_logprobs holds, for each prompt
    position, a mapping from token id (as a string, in JSON) to its log-probability."""
    choice = reply["choices"][0]
    positions = choice.get("prompt_logprobs") or []
    logprobs = []
    for position in range(request.scored_from, len(request.ids)):
        entry = (positions[position] or {}) if position < len(positions) else {}
        token = entry.get(str(request.ids[position]))
        if token is None:
            raise ServerError(
                f"the engine's reply has no log-probability for prompt position {position}: is it a vLLM "
                "that returns prompt_logprobs?"
            )
        logprobs.append(float(token["logprob"]))
    generated = until_end(list(choice.get("token_ids") or []), eos)[: request.new_tokens]
    return Scored(logprobs, generated)


@dataclass
class ServedScorer:
    server: Server
    eos: frozenset[int] = frozenset()
    concurrency: int = 16  # requests in flight: vLLM batches them
    timeout_s: float = 600.0
    engine: EngineName = "vllm"

    def score(self, requests: Sequence[Request], batch_size: int, done: Progress = no_progress) -> list[Scored]:
        """Every request in flight at once, up to `concurrency` (vLLM batches them itself; batch_size
        is the transformers engine's business)."""
        return asyncio.run(self._score_all(requests, done))

    async def _score_all(self, requests: Sequence[Request], done: Progress) -> list[Scored]:
        limit = asyncio.Semaphore(self.concurrency)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as session:

            async def one(request: Request) -> Scored:
                async with limit:
                    url = f"{self.server.base_url}/v1/completions"
                    try:
                        async with session.post(url, json=request_body(self.server.model, request)) as reply:
                            if reply.status != 200:
                                raise ServerError(f"{url} answered HTTP {reply.status}: {(await reply.text())[:300]}")
                            scored = scored_from_reply(request, await reply.json(), self.eos)
                    except (TimeoutError, aiohttp.ClientError) as e:
                        self.server.check_alive(wait_s=5.0)
                        raise ServerError(f"{url}: {type(e).__name__}: {e}") from e
                done(1)
                return scored

            return await asyncio.gather(*(one(r) for r in requests))


# Which engine, and one engine per model for every stage of a release.


def chosen_engine(choice: EngineChoice, compute: Resolved, serving: Serving) -> EngineName:
    """auto: vLLM where the model is served on more than one GPU (no one device holds it) or where the
    work runs on a GPU whose vLLM serves it; transformers on a CPU, where our loader is faster to start."""
    if choice != "auto":
        return choice
    if serving.tensor_parallel_size > 1:
        return "vllm"
    if compute.device.type == "cuda" and vllm_awq_capability().target == "gpu":
        return "vllm"
    return "transformers"


@dataclass
class Engines:
    """The engines the quality stages score models with, started on first use and kept until
    closed, so the three stages share each model's engine. For vLLM, the release's engine arguments
    (`serving`), with room for the longest request (`max_model_len`); where both the baseline and the
    candidate are kept on one GPU, each takes half the memory the release's server would."""

    choice: EngineChoice
    compute: Resolved
    serving: Serving = Serving()
    log_dir: Path = Path("validation-logs")
    max_model_len: int = 0  # the longest request the stages make; the server takes the release's if longer
    startup_timeout_s: float = 300.0
    _servers: dict[str, ServedScorer] = field(default_factory=dict, repr=False, compare=False)
    _stack: ExitStack = field(default_factory=ExitStack, repr=False, compare=False)

    @property
    def engine(self) -> EngineName:
        return chosen_engine(self.choice, self.compute, self.serving)

    def address_part(self) -> str:
        """What the scores depend on beyond the model: the engine, and for vLLM the arithmetic it serves with."""
        if self.engine == "transformers":
            return f"transformers {self.compute.address_part}"
        serving = self.serving
        return f"vllm {self.target()} {serving.dtype} tp{serving.tensor_parallel_size} w4a8={serving.cpu_int4_w4a8}"

    def describe(self) -> dict:
        """For reports: which engine scored, on what."""
        if self.engine == "transformers":
            return {"engine": "transformers"} | self.compute.describe()
        serving = self.serving
        return {
            "engine": "vllm",
            "target": self.target(),
            "dtype": serving.dtype,
            "tensor_parallel_size": serving.tensor_parallel_size,
            "why": "validation.engine: vllm" if self.choice == "vllm" else "validation.engine: auto",
        }

    def target(self) -> str:
        capability = vllm_awq_capability()
        if not capability.runs_awq:
            raise ValidationError(
                f"validation.engine is vllm, but {capability.reason} Or set validation.engine: transformers."
            )
        return serving_target(self.serving, capability.target)

    def scorer(self, model_dir: str | Path, role: str, load: Callable[[], nn.Module]) -> Scorer:
        """A scorer of `model_dir`: for transformers, of the model `load` gives, freed with the scorer
        once the stage has scored it; for vLLM, a server kept for the next stage that scores it."""
        eos = end_of_sequence_ids(model_dir)
        if self.engine == "transformers":
            # Padding is masked out of attention and cut from replies: any id will do.
            return ModelScorer(load(), eos, pad_id=min(eos, default=0))
        key = str(model_dir)
        if key not in self._servers:
            self._servers[key] = ServedScorer(self._serve(model_dir, role), eos, self.serving.max_num_seqs)
        return self._servers[key]

    def _serve(self, model_dir: str | Path, role: str) -> Server:
        target = self.target()
        longest = min(context_length(model_dir), max(self.serving.max_model_len, self.max_model_len))
        serving = replace(self.serving, max_model_len=longest)
        if target == "gpu":
            serving = replace(serving, gpu_memory_utilization=serving.gpu_memory_utilization / 2)
        engine = engine_args(model_dir, role, serving, target)
        log = self.log_dir / f"vllm-scoring-{role}.log"
        return self._stack.enter_context(
            serve(engine, engine_env(serving, target), log, startup_timeout_s=self.startup_timeout_s)
        )

    def close(self) -> None:
        self._servers.clear()
        self._stack.close()

    def __enter__(self) -> "Engines":
        return self

    def __exit__(self, *_) -> None:
        self.close()
