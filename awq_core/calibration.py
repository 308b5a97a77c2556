"""Calibration set: N windows of L tokens drawn evenly from the user's own domain texts
(read by awq_release.texts: .txt, or .jsonl with "text" or chat "messages")."""

import hashlib
from pathlib import Path

import torch
from torch import Tensor

from awq_release.errors import CalibrationError
from awq_release.texts import token_stream, window_prefix


def build_calibration(tokenizer, paths: list[Path], n_samples: int, seqlen: int) -> Tensor:
    """Token ids [n_samples, seqlen]: the texts' token stream cut into n equal spans, one window from
    each, after the tokenizer's window prefix (BOS where it starts every text with one)."""
    if not paths:
        raise CalibrationError(
            "No calibration files given: pass --calib with one or more .txt or .jsonl files of your domain text."
        )
    if n_samples < 1 or seqlen < 2:
        raise CalibrationError(f"n_samples={n_samples}, seqlen={seqlen}: need at least 1 window of at least 2 tokens.")
    stream, prefix = token_stream(tokenizer, paths), torch.tensor(window_prefix(tokenizer), dtype=torch.long)
    needed = n_samples * (seqlen - len(prefix))
    if len(stream) < needed:
        raise CalibrationError(
            f"The calibration texts hold {len(stream)} tokens; {n_samples} windows of {seqlen} need {needed}. "
            "Add more domain text or lower --n-samples / --seqlen."
        )
    span = len(stream) // n_samples
    ids = stream[: span * n_samples].reshape(n_samples, span)[:, : seqlen - len(prefix)]  # (N, L - prefix)
    return torch.cat([prefix.expand(n_samples, -1), ids], dim=1).contiguous()  # (N, L)


def calibration_fingerprint(ids: Tensor) -> str:
    return hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16]
