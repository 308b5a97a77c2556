"""The power check: could the user's own gates catch damage at all?

It plants known damage into copies of the AWQ candidate, runs the quality stages on each copy
against the same baseline (measured once per stage), and reports which stage caught which damage.
A stage measures a copy only up to its first failed gate: a unit's gates (a task, a text, a context
length) depend on that unit alone, so the rest could not change the verdict "caught", and a copy
that breaks the model costs a fraction of a stage.
A damage rewrites only the shards holding the tensors it changes; the copy's other files are hard
links to the candidate's.

fewer_levels           every linear keeps 4 of its 16 levels (each code rounded to the middle of its quarter)
permuted_mlp_scales    four blocks' MLP output projection with the scales of its output channels shuffled
zeroed_mlp             the middle block's MLP output projection zeroed: that MLP adds nothing
permuted_layer_scales  the linears the user names (default: the middle block's o_proj), scales shuffled
long_range_rotary      in every q and k projection, the rotary pairs that turn less than 1/8 radian over
                       512 tokens are reflected. q·k at a distance d depends on those pairs through
                       cos and sin of d times their frequency: reflecting both q and k flips the sign of
                       the sine, so short-range scores barely change while at thousands of tokens the
                       model's sense of distance is reversed. Only a long-context gate can see it.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from awq_core.address import code_fingerprint
from awq_core.architectures import Architecture, architecture_for, head_dim
from awq_core.checkpoint import CheckpointFolder
from awq_core.compute import Compute, Resolved, resolve
from awq_core.packing import pack_int4
from awq_release.errors import ReleaseError, ValidationError
from kernels.reference import unpack_int4
from validation.memo import MEASURING_PACKAGES, Known, family_fingerprint, settings_fingerprint
from validation.result import DamageOutcome, PowerReport
from validation.scoring import Engines
from validation.settings import DamageName, PowerCheckSettings, QualityStage, ValidationSettings
from validation.stages import STAGES, scoring_engines

Transform = Callable[[Tensor], Tensor]
KEPT_LEVELS = 4
PERMUTED_MLPS = 4
SHORT_RANGE_TOKENS = 512
SHORT_RANGE_MAX_TURN = 0.125  # radians over SHORT_RANGE_TOKENS


@dataclass(frozen=True)
class Candidate:
    """The AWQ checkpoint damage is planted into: its tensors and what its config says about them."""

    dir: Path
    config: dict
    arch: Architecture
    tensor_files: dict[str, Path]  # tensor name -> the shard holding it

    @classmethod
    def open(cls, model_dir: str | Path) -> "Candidate":
        folder = CheckpointFolder(model_dir)
        if not any(name.endswith(".qweight") for name in folder.tensors):
            raise ValidationError(
                f"{folder.dir} holds no AWQ GEMM tensors (*.qweight): the power check plants its damage in that "
                "layout. Check a candidate quantized with quantization.format: awq (the same integers as any other "
                "format), or set validation.power_check.run: false."
            )
        files = {name: info.file for name, info in folder.tensors.items()}
        return cls(folder.dir, folder.config, architecture_for(folder.config), files)

    @property
    def blocks(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def head_dim(self) -> int:
        return head_dim(self.config)

    @property
    def rope_theta(self) -> float:
        parameters = self.config.get("rope_parameters") or {}  # transformers 5; 4.x kept it at the top level
        return float(parameters.get("rope_theta") or self.config.get("rope_theta") or 10000.0)

    def linear(self, block: int, name: str) -> str:
        return f"{self.arch.layers}.{block}.{name}"

    def quantized_linears(self) -> list[str]:
        return [name.removesuffix(".qweight") for name in self.tensor_files if name.endswith(".qweight")]


def coarser_levels(qweight: Tensor) -> Tensor:
    """int32 (K, N // 8) packed codes -> the same with each code moved to the middle of its quarter."""
    step = 16 // KEPT_LEVELS
    q = unpack_int4(qweight)  # (K, N) in 0..15
    return pack_int4((q // step * step + step // 2).to(torch.uint8))


def permuted_columns(seed: int) -> Transform:
    def permute(scales: Tensor) -> Tensor:  # (K // g, N): each output channel gets another's scales
        order = torch.randperm(scales.shape[1], generator=torch.Generator().manual_seed(seed))
        return scales[:, order].contiguous()

    return permute


def negated_columns(columns: list[int]) -> Transform:
    def negate(tensor: Tensor) -> Tensor:  # scales (K // g, N) or bias (N,): along output channels
        out = tensor.clone()
        out[..., columns] = -out[..., columns]
        return out

    return negate


def slow_rotary_pairs(head_dim: int, theta: float) -> list[int]:
    """Rotary pair indices i (frequency theta^(-2i / head_dim)) that turn less than
    SHORT_RANGE_MAX_TURN radians over SHORT_RANGE_TOKENS."""
    frequencies = [theta ** (-2 * i / head_dim) for i in range(head_dim // 2)]
    return [i for i, f in enumerate(frequencies) if f * SHORT_RANGE_TOKENS < SHORT_RANGE_MAX_TURN]


def _plan_fewer_levels(c: Candidate, settings: PowerCheckSettings) -> tuple[str, dict[str, Transform]]:
    linears = c.quantized_linears()
    return (
        f"{KEPT_LEVELS} levels instead of 16 in all {len(linears)} linears",
        {f"{name}.qweight": coarser_levels for name in linears},
    )


def _plan_permuted_mlp_scales(c: Candidate, settings: PowerCheckSettings) -> tuple[str, dict[str, Transform]]:
    blocks = sorted({round(i * (c.blocks - 1) / (PERMUTED_MLPS - 1)) for i in range(PERMUTED_MLPS)})
    return (
        f"scales of {c.arch.mlp_out} shuffled across output channels in blocks {blocks}",
        {f"{c.linear(b, c.arch.mlp_out)}.scales": permuted_columns(b) for b in blocks},
    )


def _plan_zeroed_mlp(c: Candidate, settings: PowerCheckSettings) -> tuple[str, dict[str, Transform]]:
    block = c.blocks // 2
    return f"block {block}'s MLP zeroed ({c.arch.mlp_out} scales set to 0)", {
        f"{c.linear(block, c.arch.mlp_out)}.scales": torch.zeros_like
    }


def _plan_permuted_layer_scales(c: Candidate, settings: PowerCheckSettings) -> tuple[str, dict[str, Transform]]:
    layers = list(settings.layers) or [c.linear(c.blocks // 2, c.arch.attention_out)]
    unknown = [name for name in layers if f"{name}.scales" not in c.tensor_files]
    if unknown:
        raise ValidationError(
            f"power_check.layers names {unknown}, which are not quantized linears of {c.dir}; "
            f"for example: {', '.join(c.quantized_linears()[:3])}."
        )
    return f"scales of {', '.join(layers)} shuffled across output channels", {
        f"{name}.scales": permuted_columns(i) for i, name in enumerate(layers)
    }


def _plan_long_range_rotary(c: Candidate, settings: PowerCheckSettings) -> tuple[str, dict[str, Transform]]:
    channels = c.head_dim
    pairs = slow_rotary_pairs(channels, c.rope_theta)
    if not pairs:
        raise ValidationError(f"{c.dir}: no rotary pair turns slowly enough to damage only long range.")
    transforms = {}
    for block in range(c.blocks):
        for projection in c.arch.rotary_projections:
            name = c.linear(block, projection)
            heads = _output_channels(c, name) // channels
            # rotate_half pairs channel i with i + head_dim / 2: negating the second of each slow pair reflects it
            negate = negated_columns([h * channels + channels // 2 + i for h in range(heads) for i in pairs])
            transforms[f"{name}.scales"] = negate
            if f"{name}.bias" in c.tensor_files:
                transforms[f"{name}.bias"] = negate
    return (
        f"{len(pairs)} slowest rotary pairs (of {channels // 2}) reflected in every "
        f"{' and '.join(c.arch.rotary_projections)}",
        transforms,
    )


def _output_channels(c: Candidate, linear: str) -> int:
    with safe_open(c.tensor_files[f"{linear}.scales"], framework="pt") as f:
        return f.get_slice(f"{linear}.scales").get_shape()[1]


@dataclass(frozen=True)
class Damage:
    plan: Callable[[Candidate, PowerCheckSettings], tuple[str, dict[str, Transform]]]  # description, transforms
    meant_for: QualityStage | None = None  # the one stage built to catch it; None: any quality stage should


DAMAGES: dict[DamageName, Damage] = {
    "fewer_levels": Damage(_plan_fewer_levels),
    "permuted_mlp_scales": Damage(_plan_permuted_mlp_scales),
    "zeroed_mlp": Damage(_plan_zeroed_mlp),
    "permuted_layer_scales": Damage(_plan_permuted_layer_scales),
    "long_range_rotary": Damage(_plan_long_range_rotary, meant_for="long_context"),
}


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, dest)


def plant(c: Candidate, transforms: dict[str, Transform], out: Path) -> None:
    """Write the candidate with `transforms` applied to out/: changed shards rewritten, the rest linked."""
    missing = sorted(set(transforms) - set(c.tensor_files))
    if missing:
        raise ValidationError(f"{c.dir} lacks tensors {missing[:3]} that the damage changes.")
    changed = {c.tensor_files[name] for name in transforms}
    out.mkdir(parents=True)
    for path in sorted(p for p in c.dir.iterdir() if p.is_file()):
        if path not in changed:
            _link_or_copy(path, out / path.name)
            continue
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata()
        tensors = load_file(path)
        for name in tensors.keys() & transforms.keys():
            tensors[name] = transforms[name](tensors[name])
        save_file(tensors, out / path.name, metadata=metadata)


def _judge(
    baseline: Path, copy: Path, stage: str, settings: ValidationSettings, engines: Engines, known: Known
) -> tuple[str, list[str]]:
    """What the stage made of a damaged copy, and its reasons:
    caught        a gate's interval lies beyond its threshold (or the stage failed outright);
    inconclusive  only inconclusive gates rejected it, as the policy makes them: a rejection on weak evidence;
    missed        the copy passed."""
    try:
        result = STAGES[stage](
            baseline, copy, getattr(settings, stage), engines.compute, known, until_failed=True, engines=engines
        )
    except ReleaseError as e:
        return "caught", [f"the stage failed: {e}"]
    if result.status != "failed":
        return "missed", []
    caught = result.error is not None or any(m.verdict == "fail" for m in result.metrics)
    return ("caught" if caught else "inconclusive"), result.reasons


def power_check_address(
    baseline: str | Path, settings: ValidationSettings, quantization: str, compute: Resolved
) -> str:
    """What a power check's table depends on, as one hash: the quality stages' settings (and the files
    they name), the damages, the base model's family (validation.memo.family_fingerprint), the
    quantization settings (`quantization`: their fingerprint), the compute and the measuring code. A
    fine-tune of the same base released under the same policy finds the table at this address."""
    checked = dataclasses.replace(settings.power_check, run=True)  # whether it runs is not what it measures
    parts = {
        "stages": {stage: settings_fingerprint(getattr(settings, stage)) for stage in checked.stages},
        "power_check": settings_fingerprint(checked),
        "family": family_fingerprint(baseline),
        "quantization": quantization,
        "compute": scoring_engines(settings, compute).address_part(),
        "code": code_fingerprint(MEASURING_PACKAGES),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def power_check(
    baseline: str | Path,
    candidate: str | Path,
    settings: ValidationSettings,
    work_dir: str | Path,
    compute: Compute = Compute(),
    known: Known | None = None,
) -> PowerReport:
    """Plant each damage of settings.power_check into a copy under work_dir, run the stages on it,
    remove it. Each stage measures the baseline once for all copies, or not at all where `known`
    keeps its figures (the release's own stages measured it)."""
    resolved = resolve(compute)
    checked = settings.power_check
    c = Candidate.open(candidate)
    plans = {name: DAMAGES[name].plan(c, checked) for name in checked.damages}  # bad layer names fail first
    known = Known() if known is None else known
    outcomes = []
    for name, (description, transforms) in tqdm(plans.items(), desc="power check, damaged copies", unit="copy"):
        start = time.perf_counter()
        copy = Path(work_dir) / f"damaged-{name}"
        shutil.rmtree(copy, ignore_errors=True)
        try:
            plant(c, transforms, copy)
            # The copy's engine serves every stage of it, and stops before the next copy is made.
            with scoring_engines(settings, resolved) as engines:
                judged = {
                    stage: _judge(Path(baseline), copy, stage, settings, engines, known) for stage in checked.stages
                }
        finally:
            shutil.rmtree(copy, ignore_errors=True)
        outcomes.append(
            DamageOutcome(
                name,
                description,
                DAMAGES[name].meant_for,
                {stage: verdict for stage, (verdict, _) in judged.items()},
                {stage: reasons for stage, (_, reasons) in judged.items() if reasons},
                time.perf_counter() - start,
            )
        )
    return PowerReport(list(checked.stages), outcomes)
