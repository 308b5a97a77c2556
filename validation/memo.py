"""Figures measured once: what a stage measured of one model, kept under an address made of all it
depends on, so that a retry, a later release or the power check finds it instead of measuring again.

A model's figures (perplexity windows, per-item task scores, long-context probes) depend on the
model's content, the stage's settings and the files they name, the candidate's side files (the
tokenizer and config every stage reads from the candidate, for both models), the compute, and the
code that loads and scores models. The address covers all of them: changing any input changes it,
so nothing stale is found. A folder whose content hash is not known (a damaged copy of the power
check) is keyed by its path and only in memory, for one check.
"""

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from awq_core.address import code_fingerprint

# The packages whose code decides a stage's figures: the loader and kernels the candidate runs
# through, the stages, and the texts' tokenization.
MEASURING_PACKAGES = ("awq_core", "kernels", "validation", "awq_release")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SIDE_FILES_SKIPPED = ("quant_report.json",)  # timings: two equal models differ in it


class FigureStore(Protocol):
    """Figures by address, beyond one process (the lineage database) or in memory (MemoryStore)."""

    def get(self, address: str) -> Any | None: ...

    def put(self, address: str, stage: str, model_hash: str, figures: Any) -> None: ...


@dataclass
class MemoryStore:
    figures: dict[str, Any] = field(default_factory=dict)

    def get(self, address: str) -> Any | None:
        return self.figures.get(address)

    def put(self, address: str, stage: str, model_hash: str, figures: Any) -> None:
        self.figures[address] = figures


@dataclass
class Known:
    """What a stage may find measured before. `store`: figures by address; `content`: the content hash
    of each model folder (by its path) whose figures may be kept there; any other folder's figures are
    kept in `unnamed`, by path, for this object's life."""

    store: FigureStore = field(default_factory=MemoryStore)
    content: Mapping[str, str] = field(default_factory=dict)
    unnamed: MutableMapping[str, Any] = field(default_factory=dict)

    def measured(self, model: str | Path, stage: str, scope: str, measure: Callable[[], Any]) -> tuple[Any, bool]:
        """(figures, whether they were measured before): measure() runs only when nothing is kept."""
        model_hash = self.content.get(str(model))
        if model_hash is None:
            key = f"{stage} {scope} {model}"
            reused = key in self.unnamed
            if not reused:
                self.unnamed[key] = plain(measure())
            return self.unnamed[key], reused
        address = figures_address(model_hash, stage, scope)
        kept = self.store.get(address)
        if kept is not None:
            return kept, True
        figures = plain(measure())
        self.store.put(address, stage, model_hash, figures)
        return figures, False


def plain(figures: Any) -> Any:
    """The figures as a JSON round trip gives them back (tuples as lists, keys as strings): a
    stage sees the same values whether they were just measured or found in a store."""
    return json.loads(json.dumps(figures))


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def settings_fingerprint(settings: Any) -> str:
    """sha256 of a settings dataclass as data, with each file it names replaced by its content's hash."""

    def resolve(value: Any) -> Any:
        if isinstance(value, Path):
            return {"file": str(value), "sha256": file_digest(value) if value.is_file() else None}
        if isinstance(value, dict):
            return {str(k): resolve(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [resolve(v) for v in value]
        return value

    data = resolve(dataclasses.asdict(settings))
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def side_files_fingerprint(model_dir: str | Path) -> str:
    """sha256 over a model folder's files other than its weights: tokenizer, chat template, config."""
    folder, h = Path(model_dir), hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if path.suffix in WEIGHT_SUFFIXES or path.name in SIDE_FILES_SKIPPED:
            continue
        h.update(path.name.encode() + b"\0" + file_digest(path).encode())
    return h.hexdigest()


def stage_scope(settings: Any, candidate: str | Path, engine: str) -> str:
    """Everything but the model that a stage's figures of one model depend on, as one hash. `engine`:
    what scored it, with its compute (validation.scoring.Engines.address_part)."""
    parts = {
        "settings": settings_fingerprint(settings),
        "candidate_side_files": side_files_fingerprint(candidate),
        "compute": engine,
        "code": code_fingerprint(MEASURING_PACKAGES),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def figures_address(model_hash: str, stage: str, scope: str) -> str:
    return hashlib.sha256(f"{stage}\0{model_hash}\0{scope}".encode()).hexdigest()


# What fine-tunes of one base model share beyond their weights: the tokenizer, and the config without
# the fields that record where and with what a folder was written.
TOKENIZER_FILES = ("tokenizer", "vocab", "merges", "special_tokens_map", "added_tokens", "chat_template")
CONFIG_PROVENANCE = ("_name_or_path", "transformers_version")


def family_fingerprint(model_dir: str | Path) -> str:
    """sha256 of a dense checkpoint's architecture config and tokenizer files: the same for every
    fine-tune of one base model, different for another base, size or vocabulary."""
    folder, h = Path(model_dir), hashlib.sha256()
    config = json.loads((folder / "config.json").read_text())
    h.update(json.dumps({k: v for k, v in config.items() if k not in CONFIG_PROVENANCE}, sort_keys=True).encode())
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(TOKENIZER_FILES)):
        h.update(path.name.encode() + b"\0" + file_digest(path).encode())
    return h.hexdigest()
