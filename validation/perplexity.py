"""Sliding-window perplexity of a causal LM on a token stream."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def perplexity(model: nn.Module, ids: Tensor, seqlen: int = 512, stride: int = 256, batch_size: int = 4) -> float:
    """exp(mean NLL) over ids (T,). Windows of `seqlen` start every `stride` tokens; the first window
    scores all its tokens, later ones only their last `stride`, each with >= seqlen - stride of context."""
    if ids.numel() < seqlen:
        raise ValueError(f"{ids.numel()} tokens are fewer than one window of {seqlen}: give more text or a shorter window.")
    starts = list(range(0, ids.numel() - seqlen + 1, stride))
    nll, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        batch = torch.stack([ids[s : s + seqlen] for s in starts[i : i + batch_size]])  # (B, L)
        logits = model(batch).logits[:, :-1]  # (B, L-1, V) predicts tokens 1..L-1
        targets = batch[:, 1:].clone()
        for row, start in enumerate(starts[i : i + batch_size]):
            if start > 0:
                targets[row, : seqlen - 1 - stride] = -100  # already scored by the previous window
        nll += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum").item()
        count += int((targets != -100).sum())
    return math.exp(nll / count)
