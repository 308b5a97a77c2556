"""The user's text files, read the same way everywhere: calibration, perplexity, load-test prompts.

A .txt file is one document; a .jsonl file holds one document per line, a "text" string or chat
"messages" (rendered with the model's chat template).
"""

import json
from pathlib import Path

import torch
from torch import Tensor

from awq_release.errors import TextError

SUFFIXES = (".txt", ".jsonl")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise TextError(f"Text file {path} does not exist.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TextError(
            f"{path} is not UTF-8 text (byte {e.start} is {e.object[e.start : e.start + 1]!r}): "
            "convert it, e.g. `iconv -f latin1 -t utf-8`."
        ) from e


def _chat_text(tokenizer, messages: list, where: str) -> str:
    """A conversation as the model's chat template renders it; for a base model without a template,
    the turns' contents one after another as plain text, which is what such a model reads."""
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        raise TextError(f"{where}: every message needs a 'content' string (and a 'role').")
    if tokenizer.chat_template is None:
        return "\n\n".join(m["content"] for m in messages)
    return tokenizer.apply_chat_template(messages, tokenize=False)


def _read_jsonl(path: Path, tokenizer) -> list[str]:
    documents = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise TextError(f"{path}:{lineno} is not valid JSON ({e}).") from e
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            documents.append(record["text"])
        elif isinstance(record, dict) and isinstance(record.get("messages"), list):
            documents.append(_chat_text(tokenizer, record["messages"], f"{path}:{lineno}"))
        else:
            raise TextError(f"{path}:{lineno} has neither a 'text' string nor a 'messages' list.")
    return documents


def read_documents(paths: list[Path], tokenizer) -> list[str]:
    """Every non-blank document of the files, in order."""
    documents: list[str] = []
    for path in map(Path, paths):
        if path.suffix == ".txt":
            documents.append(_read_text(path))
        elif path.suffix == ".jsonl":
            documents.extend(_read_jsonl(path, tokenizer))
        else:
            raise TextError(
                f"Text file {path} has suffix {path.suffix!r}: use .txt, or .jsonl with 'text' or 'messages'."
            )
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise TextError(f"The text files {', '.join(map(str, paths)) or '(none given)'} hold no text.")
    return documents


def token_stream(tokenizer, paths: list[Path]) -> Tensor:
    """Every document tokenized and joined with EOS: one long (T,) stream."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for document in read_documents(paths, tokenizer):
        stream += tokenizer(document, add_special_tokens=False)["input_ids"] + eos
    return torch.tensor(stream)


def window_prefix(tokenizer) -> list[int]:
    """The tokens every scored or calibration window starts with: BOS where the tokenizer begins
    each text with it (Gemma, which is never trained on text without it), none otherwise."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []
