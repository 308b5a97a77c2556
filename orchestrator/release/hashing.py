"""Content hashes: of one file, and of a checkpoint folder (names and bytes), streamed."""

import hashlib
from collections.abc import Callable, Collection
from pathlib import Path

CHUNK = 1 << 24  # shards can be many GiB: never read one whole

# Given every chunk read, in order, as (file, offset of the chunk, bytes): lets a check ride on the hash's read.
Inspect = Callable[[Path, int, bytes], None]


def _update(h, path: Path, inspect: Inspect | None = None) -> None:
    offset = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if inspect is not None:
                inspect(path, offset, chunk)
            offset += len(chunk)


def stat_signature(folder: Path) -> str:
    """Identity of a folder's state from its file names, sizes and modification times: no byte read.
    Unchanged across two sensor ticks means completely written."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            h.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    _update(h, path)
    return h.hexdigest()


def content_hash(folder: Path, inspect: Inspect | None = None, skip: Collection[str] = ()) -> str:
    """sha256 over every file's relative name and bytes, in name order: same content, same hash.
    Files named in `skip` are left out (a quantized model's report, whose timings differ per run)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.name in skip:
            continue
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        _update(h, path, inspect)
    return h.hexdigest()
