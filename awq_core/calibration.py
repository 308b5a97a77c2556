"""Calibration set: N windows of L tokens drawn evenly from the user's own domain texts.

Inputs: .txt files (whole file is one document) or .jsonl files whose lines carry "text" or chat
"messages" (rendered with the model's chat template).
"""

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor

from awq_core.errors import CalibrationError


def read_documents(paths: list[Path], tokenizer) -> list[str]:
    if not paths:
        raise CalibrationError(
            "No calibration files given: pass --calib with one or more .txt or .jsonl files of your domain text."
        )
    documents: list[str] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise CalibrationError(f"Calibration file {path} does not exist.")
        if path.suffix == ".txt":
            documents.append(path.read_text(encoding="utf-8"))
        elif path.suffix == ".jsonl":
            documents.extend(_read_jsonl(path, tokenizer))
        else:
            raise CalibrationError(
                f"Calibration file {path} has suffix {path.suffix!r}: use .txt, or .jsonl with 'text' or 'messages'."
            )
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise CalibrationError(f"The calibration files {', '.join(map(str, paths))} hold no text.")
    return documents


def _read_jsonl(path: Path, tokenizer) -> list[str]:
    documents = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{path}:{lineno} is not valid JSON ({e}).") from e
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            documents.append(record["text"])
        elif isinstance(record, dict) and isinstance(record.get("messages"), list):
            documents.append(tokenizer.apply_chat_template(record["messages"], tokenize=False))
        else:
            raise CalibrationError(f"{path}:{lineno} has neither a 'text' string nor a 'messages' list.")
    return documents


def token_stream(tokenizer, paths: list[Path]) -> Tensor:
    """Every document tokenized and joined with EOS: one long (T,) stream."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for document in read_documents(paths, tokenizer):
        stream += tokenizer(document, add_special_tokens=False)["input_ids"] + eos
    return torch.tensor(stream)


def build_calibration(tokenizer, paths: list[Path], n_samples: int, seqlen: int) -> Tensor:
    """Token ids [n_samples, seqlen]: the texts' token stream cut into n equal spans, one window from each."""
    if n_samples < 1 or seqlen < 2:
        raise CalibrationError(f"n_samples={n_samples}, seqlen={seqlen}: need at least 1 window of at least 2 tokens.")
    stream = token_stream(tokenizer, paths)
    needed = n_samples * seqlen
    if len(stream) < needed:
        raise CalibrationError(
            f"The calibration texts hold {len(stream)} tokens; {n_samples} windows of {seqlen} need {needed}. "
            "Add more domain text or lower --n-samples / --seqlen."
        )
    span = len(stream) // n_samples
    ids = stream[: span * n_samples].reshape(n_samples, span)  # (N, span)
    return ids[:, :seqlen].contiguous()  # (N, L)


def calibration_fingerprint(ids: Tensor) -> str:
    return hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16]
