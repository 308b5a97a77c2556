"""Content hashes: of one file, and of a checkpoint folder (names and bytes), streamed."""

import hashlib
from pathlib import Path

CHUNK = 1 << 20  # shards can be many GiB: never read one whole


def _update(h, path: Path) -> None:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    _update(h, path)
    return h.hexdigest()


def content_hash(folder: Path) -> str:
    """sha256 over every file's relative name and bytes, in name order: same content, same hash."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        _update(h, path)
    return h.hexdigest()
