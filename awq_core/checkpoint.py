"""Read-only access to a Hugging Face checkpoint folder: checks first, then tensors on demand.

Tensors are read through safetensors' memory map one at a time, so a block's worth of weights is
all that is ever resident.
"""

import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from itertools import pairwise
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
# The files transformers reads from a model folder: each may name custom code to run (auto_map).
CODE_NAMING_FILES = (
    "config.json",
    "tokenizer_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "generation_config.json",
    "adapter_config.json",
)
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
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{path.name}: its safetensors header is not a JSON object; the file is damaged: copy it again."
        )
    header.pop("__metadata__", None)
    for name, meta in header.items():
        _check_entry(path, name, meta)
        _check_extent(path, name, meta)
    extents = sorted(tuple(meta["data_offsets"]) + (name,) for name, meta in header.items())
    for (_, end, before), (start, _, after) in pairwise(extents):
        if start < end:
            raise CheckpointError(
                f"{path.name}: tensors {before!r} and {after!r} overlap in the file; it was not written by "
                "safetensors: save the weights again with safetensors."
            )
    data_end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{path.name} is {size} bytes but its header promises {8 + header_len + data_end}: "
            "the file is truncated (an interrupted copy?); copy it again."
        )
    return header_len, header


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(path: Path, name: str, meta: object) -> None:
    """A header entry must be {"dtype": str, "shape": [n, ...], "data_offsets": [start, end]}, 0 <= start <= end."""
    well_formed = (
        isinstance(meta, dict)
        and isinstance(meta.get("dtype"), str)
        and isinstance(meta.get("shape"), list)
        and all(_is_count(n) for n in meta["shape"])
        and isinstance(meta.get("data_offsets"), list)
        and len(meta["data_offsets"]) == 2
        and all(_is_count(n) for n in meta["data_offsets"])
        and meta["data_offsets"][0] <= meta["data_offsets"][1]
    )
    if not well_formed:
        raise CheckpointError(
            f"{path.name}: the header entry of tensor {name!r} is not a safetensors entry (dtype, shape, "
            "data_offsets): the file is damaged or was not written by safetensors; save the weights again with it."
        )


def _check_extent(path: Path, name: str, meta: dict) -> None:
    """A tensor's bytes in the file must be exactly what its dtype and shape need."""
    if meta["dtype"] not in DTYPE_BYTES:
        raise CheckpointError(
            f"{path.name}: tensor {name!r} has dtype {meta['dtype']!r}, which the platform does not read: "
            f"save the weights as one of {', '.join(DTYPE_BYTES)}."
        )
    start, end = meta["data_offsets"]
    needed = math.prod(meta["shape"]) * DTYPE_BYTES[meta["dtype"]]
    if end - start != needed:
        raise CheckpointError(
            f"{path.name}: tensor {name!r} is {meta['dtype']} {meta['shape']} ({needed} bytes) but the header gives "
            f"it {end - start} bytes: the file is damaged or was written wrongly; save it again with safetensors."
        )


def read_json(path: Path) -> object:
    """A JSON file of the checkpoint, or one clear error naming it."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path.name} in {path.parent} is not valid JSON ({e}): fix or re-save it.") from e


def refuse_code(folder: Path) -> None:
    """Nothing in a checkpoint runs: no Python file in it, and no file that transformers reads names
    custom code (auto_map), since loading one would offer to run it."""
    code = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py"))
    if code:
        raise CheckpointError(
            f"{folder} holds Python code ({', '.join(code[:3])}), which the platform never runs or ships: remove "
            "it. Registered architectures and tokenizers are loaded with transformers' and vLLM's own code."
        )
    for name in CODE_NAMING_FILES:
        path = folder / name
        data = read_json(path) if path.is_file() else None
        if isinstance(data, dict) and "auto_map" in data:
            raise CheckpointError(
                f"{path} names custom code (auto_map: {str(data['auto_map'])[:80]}), which the platform never runs "
                "or ships: remove auto_map. Registered architectures and tokenizers are loaded with transformers' "
                "and vLLM's own code."
            )


def check_folder(folder: Path) -> None:
    """What a checkpoint folder must be before any file in it is read: a folder of its own (not a
    link to one elsewhere), with no links out of it and no code in it."""
    if folder.is_symlink():
        raise CheckpointError(
            f"{folder} is a link to {os.readlink(folder)}: a checkpoint is read only from a folder of its own, so "
            "that nothing it names lies elsewhere. Copy the folder itself there (`cp -rL`)."
        )
    refuse_outside_links(folder)
    refuse_code(folder)


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
        check_folder(self.dir)
        config_path = self.dir / "config.json"
        if not config_path.is_file():
            raise CheckpointError(
                f"{self.dir} has no config.json: save the model with `save_pretrained` so its config is written."
            )
        config = read_json(config_path)
        if not isinstance(config, dict):
            raise CheckpointError(f"{config_path} is not a JSON object: re-save the config with `save_pretrained`.")
        self.config: dict = config
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
        data = read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(
                f"{index.name} in {self.dir} has no weight_map of tensor names to shard files: re-save the model "
                "with `save_pretrained`, or remove the index if the folder holds one model.safetensors."
            )
        names = sorted(set(weight_map.values()))
        if not names:
            raise CheckpointError(f"{index.name} in {self.dir} maps no tensor to a shard: re-save the model.")
        root = self.dir.resolve()
        outside = [n for n in names if not n or Path(n).is_absolute() or not (root / n).resolve().is_relative_to(root)]
        if outside:  # checked before any file it names is touched, and never described
            raise CheckpointError(
                f"{index.name} maps tensors to {outside[0]!r}, outside {self.dir}: an index may name only shard files "
                "inside its own folder. Copy the shards into the folder and name them there."
            )
        missing = [n for n in names if not (self.dir / n).is_file()]
        if missing:
            raise CheckpointError(
                f"{index.name} lists {', '.join(map(repr, missing))}, missing from {self.dir}: the copy is incomplete."
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


# Sizes a decoder config must give as positive integers (those present among the optional ones).
REQUIRED_SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")
OPTIONAL_SIZES = ("intermediate_size", "num_key_value_heads", "head_dim", "max_position_embeddings")


def check_declared_shape(ckpt: CheckpointFolder, layers: str, embed: str) -> int:
    """The config's sizes are positive, its embedding is in the weights with the vocabulary and width it
    declares, and the weights hold no decoder layer beyond the ones it declares. Returns the layer count."""
    config, where = ckpt.config, ckpt.dir / "config.json"
    for key in REQUIRED_SIZES + tuple(k for k in OPTIONAL_SIZES if config.get(k) is not None):
        value = config.get(key)
        if not _is_count(value) or value < 1:
            raise CheckpointError(
                f"{where} gives {key}={value!r}: it must be a positive integer matching the weights; fix the config."
            )
    info = ckpt.tensors.get(f"{embed}.weight")
    expected = [config["vocab_size"], config["hidden_size"]]
    if info is None or list(info.shape) != expected or info.dtype not in FLOAT_DTYPES:
        found = "absent" if info is None else f"{info.dtype} {list(info.shape)}"
        raise CheckpointError(
            f"{ckpt.dir}: {embed}.weight is {found}, but config.json declares a floating-point {expected} "
            "(vocab_size, hidden_size): the config does not belong to these weights; fix one of them."
        )
    n_layers = config["num_hidden_layers"]
    prefix = re.compile(rf"{re.escape(layers)}\.(\d+)\.")
    beyond = sorted({int(m[1]) for name in ckpt.tensors if (m := prefix.match(name)) and int(m[1]) >= n_layers})
    if beyond:
        raise CheckpointError(
            f"{ckpt.dir}: the weights hold decoder layer {beyond[0]}, but config.json declares {n_layers} layers "
            "(num_hidden_layers): set it to the number of layers the weights hold."
        )
    return n_layers


def load_tokenizer(model_dir: str | Path):
    """The folder's tokenizer, checked first; transformers is told never to run the folder's code, so
    it raises where it would otherwise ask on standard input."""
    from transformers import AutoTokenizer

    check_folder(Path(model_dir))
    try:
        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    except (ValueError, KeyError, TypeError, OSError, ArithmeticError) as e:
        raise CheckpointError(
            f"The tokenizer in {model_dir} cannot be loaded ({(str(e).splitlines() or [type(e).__name__])[0][:200]}): "
            "save it again with `tokenizer.save_pretrained`."
        ) from e


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
