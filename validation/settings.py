"""Each stage's settings and thresholds (the user's, with defaults), read from one YAML or JSON file.

perplexity:   {domain_texts: [a.txt], general_texts: [b.txt], max_increase: 0.15}
tasks:        {tasks: [{path: capitals.jsonl, critical: true}], max_drop: 0.03}
long_context: {texts: [long.txt], lengths: [512, 2048, 4096, 8192]}
load:         {concurrency: [1, 4], sla: {ttft_p90_s: 2.0}}
"""

import dataclasses
import glob
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from awq_release.errors import ValidationError
from deploy.cluster import Staging
from deploy.engine import Serving
from validation.result import Inconclusive


@dataclass(frozen=True)
class Evidence:
    """How a stage's gates weigh their confidence intervals (validation.evidence)."""

    confidence: float = 0.95  # of each gate's interval
    inconclusive: Inconclusive = "fail"  # a threshold inside the interval: fail, or pass with a warning ("warn")
    resamples: int = 2000  # bootstrap resamples, where a stage bootstraps

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1:
            raise ValidationError(f"evidence.confidence must be in [0.5, 1), e.g. 0.95; got {self.confidence}.")
        if self.resamples < 100:
            raise ValidationError(f"evidence.resamples must be at least 100, got {self.resamples}.")


@dataclass(frozen=True)
class PerplexitySettings:
    domain_texts: tuple[Path, ...] = ()  # the user's held-out domain text (not the calibration set)
    general_texts: tuple[Path, ...] = ()
    max_tokens: int = 8192  # per text
    seqlen: int = 512
    stride: int = 256
    max_increase: float = 0.15  # relative perplexity increase over the baseline, per text
    evidence: Evidence = Evidence()  # windows are bootstrapped


@dataclass(frozen=True)
class TaskSpec:
    path: Path
    critical: bool = False
    max_drop: float | None = None  # this task's own threshold; default: max_drop, or max_drop_critical
    inconclusive: Inconclusive | None = None  # default: "fail" if critical, else tasks.evidence.inconclusive


@dataclass(frozen=True)
class TaskSettings:
    tasks: tuple[TaskSpec, ...] = ()
    max_drop: float = 0.03  # relative accuracy drop
    max_drop_critical: float = 0.01
    max_new_tokens: int = 24
    batch_size: int = 16
    limit: int | None = None  # items per task, for quick runs
    # A non-critical task whose interval holds its threshold passes with a warning; a critical one fails.
    evidence: Evidence = Evidence(inconclusive="warn")


@dataclass(frozen=True)
class LongContextSettings:
    texts: tuple[Path, ...] = ()  # long documents; each length uses the documents that reach it
    lengths: tuple[int, ...] = ()  # empty: 512, 2K, 4K and 8K capped at the model's context; set ones must fit it
    target_tokens: int = 128  # final tokens scored at each length
    documents: int = 2  # per length, each also carries one retrieval probe
    max_degradation: float = 0.15  # relative perplexity increase at any length
    max_growth: float = 0.10  # degradation at the longest length minus at the shortest
    max_retrieval_drop: float = 0.5  # fraction of probes the candidate may lose against the baseline
    evidence: Evidence = Evidence()  # blocks of scored tokens are bootstrapped; retrieval is a point decision


@dataclass(frozen=True)
class SLA:
    ttft_p90_s: float = 5.0
    itl_p90_s: float = 0.5
    e2e_p99_s: float = 60.0
    min_output_tokens_per_s: float = 1.0
    max_error_rate: float = 0.0


@dataclass(frozen=True)
class LoadSettings:
    prompt_texts: tuple[Path, ...] = ()  # prompts are cut from these
    concurrency: tuple[int, ...] = (1, 4)
    requests_per_level: int = 8
    prompt_tokens: int = 256
    output_tokens: int = 64
    sla: SLA = SLA()
    compare_baseline: bool = False  # also serve the baseline, to report the speed-up
    port: int | None = None
    # An OpenAI-compatible server already serving the candidate (e.g. http://staging:8000): drive it
    # instead of starting one here, e.g. a server users started with `awq-release staging`.
    endpoint: str | None = None
    # On Kubernetes: start each server as a staging Deployment on the target GPU nodes (deploy.cluster)
    # instead of in the stage's own pod, and delete it after the test.
    staging: Staging | None = None
    # False: on a host whose vLLM cannot run 4-bit AWQ, record the stage as skipped (never as passed).
    required: bool = True
    # The engine arguments the release ships (a release policy's top-level `serving:`): the server
    # started here runs exactly these, with only host and port of its own.
    serving: Serving = Serving()
    startup_timeout_s: float = 300.0
    request_timeout_s: float = 120.0
    log_dir: Path = Path("validation-logs")


QualityStage = Literal["perplexity", "tasks", "long_context"]
StageName = Literal[QualityStage, "load"]  # every stage, in the order a release runs them (validation.stages)
DamageName = Literal["fewer_levels", "permuted_mlp_scales", "zeroed_mlp", "permuted_layer_scales", "long_range_rotary"]


@dataclass(frozen=True)
class PowerCheckSettings:
    """Plant known damage into the candidate and run the quality stages on each damaged copy
    (validation.power): which gates catch what. The load stage is left out: damage changes no speed."""

    run: bool = False  # in the release job, before promotion; `awq-release validate --power-check` runs it anyway
    damages: tuple[DamageName, ...] = typing.get_args(DamageName)
    layers: tuple[str, ...] = ()  # linears permuted_layer_scales damages; empty: the middle block's o_proj
    stages: tuple[QualityStage, ...] = typing.get_args(QualityStage)


@dataclass(frozen=True)
class ValidationSettings:
    perplexity: PerplexitySettings = PerplexitySettings()
    tasks: TaskSettings = TaskSettings()
    long_context: LongContextSettings = LongContextSettings()
    load: LoadSettings = LoadSettings()
    power_check: PowerCheckSettings = PowerCheckSettings()


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


def load_settings(path: str | Path | None) -> ValidationSettings:
    """Validation settings from a file: top-level stage keys, or under `validation:` as in a release policy,
    whose `serving:` section is then what the load stage starts."""
    if path is None:
        return ValidationSettings()
    data = read_mapping(path, "Settings file")
    settings = from_dict(ValidationSettings, data.get("validation", data), str(path))
    if "validation" not in data or "serving" not in data:
        return settings
    serving = from_dict(Serving, data["serving"], f"{path}: serving")
    return dataclasses.replace(settings, load=dataclasses.replace(settings.load, serving=serving))
