"""Read-only access to a Hugging Face checkpoint folder: checks first, then tensors on demand.

Tensors are read through safetensors' memory map one at a time, so a block's worth of weights is
all that is ever resident.
"""

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from awq_release.errors import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]


def _read_header(path: Path) -> dict:
    """Parse a safetensors header and check the file holds every byte it promises."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(
                f"{path.name} is {size} bytes, too short to be safetensors: the copy is truncated; copy it again."
            )
        (header_len,) = struct.unpack("<Q", prefix)
        if 8 + header_len > size:
            raise CheckpointError(
                f"{path.name}: header claims {header_len} bytes but the "
                f"file has {size}: the copy is truncated; copy it again."
            )
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(
                f"{path.name}: unreadable safetensors header ({e}); the file is damaged: copy it again."
            ) from e
    header.pop("__metadata__", None)
    data_end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{path.name} is {size} bytes but its header promises {8 + header_len + data_end}: "
            "the file is truncated (an interrupted copy?); copy it again."
        )
    return header


class CheckpointFolder:
    """A checked checkpoint folder: config, tokenizer and safetensors weights."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        if not self.dir.is_dir():
            raise CheckpointError(f"{self.dir} is not a folder: give the path of a Hugging Face checkpoint folder.")
        config_path = self.dir / "config.json"
        if not config_path.is_file():
            raise CheckpointError(
                f"{self.dir} has no config.json: save the model with `save_pretrained` so its config is written."
            )
        try:
            self.config: dict = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{config_path} is not valid JSON ({e}): fix or re-save the config.") from e
        if not any((self.dir / name).is_file() for name in TOKENIZER_FILES):
            raise CheckpointError(
                f"{self.dir} has no tokenizer ({' or '.join(TOKENIZER_FILES)}): save it beside the model with "
                "`tokenizer.save_pretrained`."
            )
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            pickles = sorted(p.name for p in self.dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise CheckpointError(
                    f"{self.dir} holds only pickle weights ({', '.join(pickles)}), which can run code when loaded "
                    "and are refused. Convert them: "
                    "`AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`."
                )
            raise CheckpointError(f"{self.dir} has no *.safetensors weights: save the model with `save_pretrained`.")
        self.tensors: dict[str, TensorInfo] = {}
        for path in self._weight_files(files):
            for name, meta in _read_header(path).items():
                self.tensors[name] = TensorInfo(path, meta["dtype"], tuple(meta["shape"]))

    def _weight_files(self, found: list[Path]) -> list[Path]:
        index = self.dir / "model.safetensors.index.json"
        if not index.is_file():
            return found
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (self.dir / n).is_file()]
        if missing:
            raise CheckpointError(
                f"{index.name} lists {', '.join(missing)}, missing from {self.dir}: the copy is incomplete."
            )
        return [self.dir / n for n in names]

    def get(self, name: str) -> Tensor:
        info = self.tensors[name]
        with safe_open(info.file, framework="pt") as f:
            return f.get_tensor(name)

    def load_prefix(self, prefix: str) -> dict[str, Tensor]:
        """Every tensor under `prefix`, keyed by the rest of its name."""
        return {name[len(prefix) :]: self.get(name) for name in self.tensors if name.startswith(prefix)}

    def check_finite(self) -> None:
        """Refuse NaN or Inf anywhere, one tensor at a time."""
        for name, info in self.tensors.items():
            t = self.get(name)
            if t.is_floating_point() and not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).sum())
                raise CheckpointError(
                    f"{info.file.name}: tensor {name} holds {bad} NaN/Inf values: the fine-tune diverged or the "
                    "file is damaged; fix the checkpoint before quantizing."
                )

    def fingerprint(self) -> str:
        """Cheap identity of the weights: every header plus size and modification time of each file."""
        h = hashlib.sha256()
        for path in sorted({info.file for info in self.tensors.values()}):
            stat = path.stat()
            h.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        h.update(json.dumps({n: (i.dtype, i.shape) for n, i in sorted(self.tensors.items())}).encode())
        return h.hexdigest()[:16]
