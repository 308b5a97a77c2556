"""Each stage's settings and thresholds (the user's, with defaults), read from one YAML or JSON file.

perplexity:   {domain_texts: [a.txt], general_texts: [b.txt], max_increase: 0.15}
tasks:        {tasks: [{path: capitals.jsonl, critical: true}], max_drop: 0.03}
long_context: {texts: [long.txt], lengths: [512, 2048, 4096, 8192]}
load:         {concurrency: [1, 4], sla: {ttft_p90_s: 2.0}}
"""

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from awq_release.errors import ValidationError
from awq_release.settings import from_dict, read_mapping
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
    # What scores the quality stages' models (validation.scoring): transformers on the compute device,
    # vLLM with the release's serving arguments (tensor parallel as served), or auto: vLLM where the
    # model is served on several GPUs or the work runs on a GPU, transformers on a CPU.
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    perplexity: PerplexitySettings = PerplexitySettings()
    tasks: TaskSettings = TaskSettings()
    long_context: LongContextSettings = LongContextSettings()
    load: LoadSettings = LoadSettings()
    power_check: PowerCheckSettings = PowerCheckSettings()


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
