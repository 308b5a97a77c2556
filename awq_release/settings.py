"""Settings files to typed settings: YAML (or JSON) read into frozen dataclasses, refusing unknown
keys, wrong types, NaN and negative numbers where the file is read, with errors that name the key.
Every settings type goes through here: the release policy, QuantConfig, Compute and each stage's."""

import dataclasses
import glob
import math
import types
import typing
from pathlib import Path

import yaml

from awq_release.errors import ValidationError


def _convert(kind, value, where: str):
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if isinstance(value, kind):
            return value
        if not isinstance(value, dict):
            raise ValidationError(f"{where}: expected a mapping, got {value!r}.")
        return from_dict(kind, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValidationError(f"{where}: expected a list, got {value!r}.")
        item = typing.get_args(kind)[0]
        if item is Path:
            return tuple(path for i, v in enumerate(value) for path in _expand(v, f"{where}[{i}]"))
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is typing.Literal:
        if value not in typing.get_args(kind):
            raise ValidationError(f"{where}: expected one of {list(typing.get_args(kind))}, got {value!r}.")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ValidationError(f"{where}: expected a mapping, got {value!r}.")
        key_kind, value_kind = typing.get_args(kind)
        return {_convert(key_kind, k, where): _convert(value_kind, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        members = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(members) == 1:
            return _convert(members[0], value, where)
        for member in members:
            try:
                return _convert(member, value, where)
            except ValidationError:
                continue
        raise ValidationError(f"{where}: expected {' or '.join(map(_describe, members))}, got {value!r}.")
    if kind is Path:
        return Path(value).expanduser()
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValidationError(f"{where}: expected {kind.__name__}, got {value!r}.")
    if kind in (int, float) and not (math.isfinite(value) and value >= 0):
        # Every count, size, threshold and time in the settings: a NaN would pass every comparison
        # and a negative one would make no sense, so both stop the run where the file is read.
        raise ValidationError(f"{where}: expected a finite number of at least 0, got {value!r}.")
    return value


def _describe(kind) -> str:
    """A type as an error message names it: bool, or 'auto' for Literal["auto"]."""
    if typing.get_origin(kind) is typing.Literal:
        return " or ".join(map(repr, typing.get_args(kind)))
    return getattr(kind, "__name__", str(kind))


def _expand(pattern, where: str) -> list[Path]:
    """A path, with ~ and glob patterns (a/*.txt) expanded; a pattern must match something."""
    if not isinstance(pattern, (str, Path)):
        raise ValidationError(f"{where}: expected a path, got {pattern!r}.")
    path = Path(pattern).expanduser()
    if not glob.has_magic(str(path)):
        return [path]
    matches = sorted(Path(p) for p in glob.glob(str(path)))
    if not matches:
        raise ValidationError(f"{where}: {pattern} matches no file.")
    return matches


def from_dict(cls, data: dict, where: str = "settings"):
    """Build a settings dataclass from plain data, refusing unknown keys and wrong types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValidationError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(fields)}.")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()})


def parse_mapping(text: str, source: str, what: str) -> dict:
    """YAML (or JSON) text holding a mapping, with errors that name where it came from."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ValidationError(f"{what} {source} is not valid YAML/JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValidationError(f"{what} {source} must hold a mapping, not {type(data).__name__}.")
    return data


def read_mapping(path: str | Path, what: str) -> dict:
    """A YAML (or JSON) file holding a mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"{what} {path} does not exist.")
    return parse_mapping(path.read_text(), str(path), what)
