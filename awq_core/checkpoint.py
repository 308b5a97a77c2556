"""Read-only access to a Hugging Face checkpoint folder: checks first, then tensors on demand.

Tensors are read through safetensors' memory map one at a time, so a block's worth of weights is
all that is ever resident.
"""

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from awq_release.errors import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# What may travel from a checkpoint into a quantized output and a release beside the weights and
# config: tokenizer, chat template, generation config, model card and licence. Nothing else.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "README.md",
)
LICENCE_PREFIXES = ("LICENSE", "LICENCE", "NOTICE", "USE_POLICY")
DTYPE_BYTES = {
    **{"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1},
    **{"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1},
}


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # byte range in the file
    end: int


FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _read_header(path: Path) -> tuple[int, dict]:
    """Parse a safetensors header and check the file holds every byte it promises: (length, header)."""
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
    for name, meta in header.items():
        _check_extent(path, name, meta)
    data_end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{path.name} is {size} bytes but its header promises {8 + header_len + data_end}: "
            "the file is truncated (an interrupted copy?); copy it again."
        )
    return header_len, header


def _check_extent(path: Path, name: str, meta: dict) -> None:
    """A tensor's bytes in the file must be exactly what its dtype and shape need."""
    if meta["dtype"] not in DTYPE_BYTES:
        raise CheckpointError(
            f"{path.name}: tensor {name} has dtype {meta['dtype']}, which the platform does not read: "
            f"save the weights as one of {', '.join(DTYPE_BYTES)}."
        )
    start, end = meta["data_offsets"]
    needed = math.prod(meta["shape"]) * DTYPE_BYTES[meta["dtype"]]
    if end - start != needed:
        raise CheckpointError(
            f"{path.name}: tensor {name} is {meta['dtype']} {meta['shape']} ({needed} bytes) but the header gives "
            f"it {end - start} bytes: the file is damaged or was written wrongly; save it again with safetensors."
        )


def refuse_outside_links(folder: Path) -> None:
    """A link that leaves the folder could put any file of this host (/etc/shadow) into a release."""
    root = folder.resolve()
    for path in folder.rglob("*"):
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise CheckpointError(
                f"{path.relative_to(folder)} in {folder} is a link to {os.readlink(path)}, outside the checkpoint "
                "folder: such links are refused. Copy the files themselves into the folder (e.g. `cp -rL`)."
            )


def side_files(folder: Path) -> list[Path]:
    """The allow-listed files beside the weights that are files inside the folder (a link counts only
    if it points inside)."""
    root = folder.resolve()
    allowed = (p for p in sorted(folder.iterdir()) if p.name in SIDE_FILES or p.name.startswith(LICENCE_PREFIXES))
    return [p for p in allowed if p.is_file() and p.resolve().is_relative_to(root)]


class CheckpointFolder:
    """A checked checkpoint folder: config, tokenizer and safetensors weights."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        if not self.dir.is_dir():
            raise CheckpointError(f"{self.dir} is not a folder: give the path of a Hugging Face checkpoint folder.")
        refuse_outside_links(self.dir)
        config_path = self.dir / "config.json"
        if not config_path.is_file():
            raise CheckpointError(
                f"{self.dir} has no config.json: save the model with `save_pretrained` so its config is written."
            )
        try:
            self.config: dict = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{config_path} is not valid JSON ({e}): fix or re-save the config.") from e
        if "auto_map" in self.config:
            raise CheckpointError(
                f"{config_path} names custom model code (auto_map: {sorted(self.config['auto_map'])}), which the "
                "platform never runs or ships: remove auto_map. Registered architectures are quantized and served "
                "with transformers' and vLLM's own code."
            )
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
            header_len, header = _read_header(path)
            for name, meta in header.items():
                start, end = (8 + header_len + offset for offset in meta["data_offsets"])
                self.tensors[name] = TensorInfo(path, meta["dtype"], tuple(meta["shape"]), start, end)

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
            _refuse_non_finite(name, info, self.get(name))

    def fingerprint(self) -> str:
        """Cheap identity of the weights: every header plus size and modification time of each file."""
        h = hashlib.sha256()
        for path in sorted({info.file for info in self.tensors.values()}):
            stat = path.stat()
            h.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        h.update(json.dumps({n: (i.dtype, i.shape) for n, i in sorted(self.tensors.items())}).encode())
        return h.hexdigest()[:16]

    def finite_check(self) -> "FiniteCheck":
        """The same check, fed the files' bytes by whoever reads them anyway (the content hash)."""
        return FiniteCheck(self.tensors)


def _refuse_non_finite(name: str, info: TensorInfo, values: Tensor) -> None:
    if values.is_floating_point() and not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise CheckpointError(
            f"{info.file.name}: tensor {name} holds {bad} NaN/Inf values: the fine-tune diverged or the "
            "file is damaged; fix the checkpoint before quantizing."
        )


class FiniteCheck:
    """check_finite() over bytes streamed in file order, so one read of the weights serves both the
    content hash and this check. Call it as `check(path, offset, chunk)` for every chunk of every
    file; it raises at the first NaN or Inf, and `done()` says whether every tensor was seen whole."""

    def __init__(self, tensors: dict[str, TensorInfo]):
        self._by_file: dict[Path, list[tuple[str, TensorInfo]]] = {}
        floats = ((name, info) for name, info in tensors.items() if info.dtype in FLOAT_DTYPES)
        for name, info in sorted(floats, key=lambda item: item[1].start):
            self._by_file.setdefault(info.file.resolve(), []).append((name, info))
        self._seen: dict[str, int] = {}  # tensor -> bytes checked so far
        self._carry: dict[str, bytes] = {}  # bytes of a value split across two chunks

    def __call__(self, path: Path, offset: int, chunk: bytes) -> None:
        for name, info in self._by_file.get(path.resolve(), ()):
            lo, hi = max(info.start, offset), min(info.end, offset + len(chunk))
            if lo >= hi:
                continue
            dtype = FLOAT_DTYPES[info.dtype]
            data = self._carry.pop(name, b"") + chunk[lo - offset : hi - offset]
            whole = len(data) - len(data) % dtype.itemsize
            if whole:
                _refuse_non_finite(name, info, torch.frombuffer(bytearray(data[:whole]), dtype=dtype))
            if whole < len(data):
                self._carry[name] = data[whole:]
            self._seen[name] = self._seen.get(name, 0) + hi - lo

    def done(self) -> bool:
        return all(self._seen.get(name, 0) == info.end - info.start for f in self._by_file.values() for name, info in f)
