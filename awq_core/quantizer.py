"""quantize(): AWQ a checkpoint block by block into a 4-bit checkpoint (AutoAWQ GEMM or compressed-tensors),
resumably and atomically.

The output is assembled in a hidden `.NAME.partial` folder beside the target and renamed into place
only when complete. Each finished block is one shard there; a rerun with the same weights,
calibration tokens and settings picks up at the first missing block, and any other rerun starts over.
"""

import dataclasses
import errno
import hashlib
import json
import logging
import resource
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from awq_core.architectures import Architecture, architecture_for
from awq_core.block import quantize_block
from awq_core.calibration import calibration_fingerprint
from awq_core.checkpoint import CheckpointFolder, check_declared_shape, side_files
from awq_core.compute import Compute, Resolved, resolve
from awq_core.config import QuantConfig
from awq_core.formats import quantization_config
from awq_core.model import (
    block_kwargs,
    embed,
    layer_types,
    materialize_block,
    meta_model,
    rotary_embedding,
    run_block,
)
from awq_core.packing import LAYOUTS
from awq_core.quant import dequantize_groups
from awq_release.errors import CalibrationError, CheckpointError, QuantizationError, UnsupportedArchitecture

log = logging.getLogger(__name__)

REPORT_NAME = "quant_report.json"
STORAGE_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


@dataclass
class QuantReport:
    out_dir: str
    report_path: str
    seconds: float
    peak_rss_mb: float  # peak resident memory of the process while quantize() ran
    start_rss_mb: float  # resident memory when it began (interpreter, torch, the caller's data)
    peak_gpu_mb: float | None  # peak GPU memory torch allocated while quantize() ran; None on CPU
    compute: dict  # device, dtype and why (awq_core.compute)
    resumed_blocks: int
    block_mse: list[float]
    block_seconds: list[float]  # wall time of each block in this run (a resumed block: its replay)
    layers: list[dict]
    config: dict

    def summary(self) -> dict:
        """The machine-readable figures the CLI prints with --json."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "layers"}


def _rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _reset_peak_rss() -> None:
    """Start VmHWM afresh, so the report's peak is quantize()'s own, not the caller's (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak covers the whole process


def _check_shapes(ckpt: CheckpointFolder, arch: Architecture, n_layers: int, cfg: QuantConfig) -> None:
    for i in range(n_layers):
        prefix = f"{arch.layers}.{i}."
        for name in arch.linears:
            info = ckpt.tensors.get(f"{prefix}{name}.weight")
            if info is None:
                raise UnsupportedArchitecture(
                    f"Block {i} has no {name}.weight although its architecture "
                    "maps it: the checkpoint does not match its config."
                )
            if len(info.shape) != 2 or info.dtype not in STORAGE_DTYPES or 0 in info.shape:
                raise CheckpointError(
                    f"{prefix}{name}.weight is {info.dtype} {list(info.shape)}: a linear's weight is a non-empty "
                    f"matrix of {', '.join(STORAGE_DTYPES)}; the checkpoint is damaged or not a trained model."
                )
            out_features, in_features = info.shape
            if in_features % cfg.group_size:
                raise QuantizationError(
                    f"group_size={cfg.group_size} does not divide {prefix}{name}'s {in_features} input features: "
                    "choose a group size that divides it (32 or 64 divide more)."
                )
            if out_features % 8:
                raise QuantizationError(
                    f"{prefix}{name} has {out_features} outputs, not a multiple of 8: the AWQ layout packs 8 per int32."
                )
        unmapped = [
            n
            for n, t in ckpt.tensors.items()
            if n.startswith(prefix)
            and len(t.shape) == 2
            and n.removeprefix(prefix).removesuffix(".weight") not in arch.linears
        ]
        if unmapped:
            raise UnsupportedArchitecture(
                f"Block {i} has linears the mapping does not cover ({', '.join(map(repr, unmapped))}): extend "
                "awq_core/architectures.py."
            )


def _check_config_shapes(ckpt: CheckpointFolder) -> None:
    """Every weight has the shape the config gives its module (on the meta device: no memory)."""
    model, _ = meta_model(ckpt.dir, torch.float32)
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for name, info in ckpt.tensors.items():
        if name in expected and expected[name] != info.shape:
            raise CheckpointError(
                f"{name} is {list(info.shape)} in the weights, but {ckpt.dir}/config.json makes it "
                f"{list(expected[name])}: the config does not belong to these weights; fix one of them."
            )


def _inputs_fingerprint(ckpt: CheckpointFolder, calib: Tensor, cfg: QuantConfig, compute: Resolved) -> str:
    """Blocks are reused only from a run with the same weights, calibration, settings and precision."""
    parts = (
        ckpt.fingerprint(),
        calibration_fingerprint(calib),
        cfg.fingerprint(),
        compute.device.type,
        str(compute.dtype),
    )
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]


def _check_calibration(calib: Tensor, max_positions: int | None) -> None:
    if calib.ndim != 2 or calib.numel() == 0:
        raise CalibrationError(f"Calibration ids must be a non-empty (N, L) tensor, got shape {tuple(calib.shape)}.")
    if max_positions and calib.shape[1] > max_positions:
        raise CalibrationError(
            f"seqlen {calib.shape[1]} exceeds the model's {max_positions} positions: lower --seqlen."
        )


def activation_device(hidden: Tensor, compute: Resolved) -> torch.device:
    """Where the calibration activations live between blocks: on the GPU when input, output and the
    reference output fit in half its free memory, on the host otherwise (run_block moves chunks)."""
    if compute.device.type != "cuda":
        return compute.device
    free_bytes, _ = torch.cuda.mem_get_info(compute.device)
    return compute.device if 3 * hidden.numel() * hidden.element_size() < free_bytes / 2 else torch.device("cpu")


def _open_work_dir(work: Path, fingerprint: str) -> None:
    progress = work / "progress.json"
    if work.exists():
        if progress.is_file() and json.loads(progress.read_text()).get("fingerprint") == fingerprint:
            return
        log.warning("Discarding %s: it was made from other weights, calibration or settings.", work)
        shutil.rmtree(work)
    (work / ".blocks").mkdir(parents=True)
    progress.write_text(json.dumps({"fingerprint": fingerprint}))


@contextmanager
def _disk_full_is_clear(work: Path, out_dir: Path) -> Iterator[None]:
    """No space left while writing: one clear error instead of an OSError or SafetensorError. The
    finished blocks stay in the hidden work folder, so a rerun after freeing space resumes."""
    try:
        yield
    except (OSError, SafetensorError) as e:
        if getattr(e, "errno", None) != errno.ENOSPC and "No space left" not in str(e):
            raise
        finished = len(list((work / ".blocks").glob("*.json")))
        raise QuantizationError(
            f"The disk holding {out_dir.parent} is full: free space there or choose another output folder. "
            f"Nothing was written to {out_dir}; the {finished} finished blocks are kept in {work} and a rerun "
            "with the same inputs resumes from them."
        ) from e


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.rename(path)


def _dense_block_state(tensors: dict[str, Tensor], arch: Architecture, config: QuantConfig) -> dict[str, Tensor]:
    """A finished block's shard back as dense weights (the fake-quantized values) for a resumed run."""
    state = {k: v for k, v in tensors.items() if k.rsplit(".", 1)[0] not in arch.linears or k.endswith(".bias")}
    layout = LAYOUTS[config.format]
    for name in arch.linears:
        groups = layout.unpack({suffix: tensors[f"{name}.{suffix}"] for suffix in layout.suffixes})
        state[f"{name}.weight"] = dequantize_groups(groups.q, groups.scales, groups.zeros, config.group_size)
    return state


def _copy_side_files(source: Path, dest: Path) -> None:
    """The allow-listed files (tokenizer, chat template, generation config, card, licence), as files."""
    for path in side_files(source):
        shutil.copyfile(path, dest / path.name)


@dataclass
class _Blocks:
    """What the block loop leaves behind: where each tensor is stored and each block's figures."""

    weight_map: dict[str, str] = field(default_factory=dict)  # tensor name -> shard file
    block_mse: list[float] = field(default_factory=list)
    block_seconds: list[float] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    resumed: int = 0


def _shard_name(index: int, n_layers: int) -> str:
    """Shard `index` of n_layers + 1: one per decoder block, then one for everything else."""
    return f"model-{index + 1:05d}-of-{n_layers + 1:05d}.safetensors"


def check_checkpoint(
    model_dir: str | Path, config: QuantConfig = QuantConfig()
) -> tuple[CheckpointFolder, Architecture]:
    """A source checkpoint and its architecture, after every check that reads no weight: files,
    code, links, headers, the config's sizes against the weights' shapes, and the settings against
    each linear."""
    ckpt = CheckpointFolder(model_dir)
    arch = architecture_for(ckpt.config)
    _check_shapes(ckpt, arch, check_declared_shape(ckpt, arch.layers, arch.embed), config)
    _check_config_shapes(ckpt)
    return ckpt, arch


def _checked_source(
    model_dir: str | Path, calib: Tensor, config: QuantConfig, finite_checked: str | None
) -> tuple[CheckpointFolder, Architecture]:
    """The checkpoint and its architecture, refused before any work if anything would fail later."""
    ckpt, arch = check_checkpoint(model_dir, config)
    _check_calibration(calib, ckpt.config.get("max_position_embeddings"))
    if ckpt.fingerprint() != finite_checked:  # unless these very files were checked already
        ckpt.check_finite()
    return ckpt, arch


def _quantize_blocks(
    ckpt: CheckpointFolder,
    arch: Architecture,
    calib: Tensor,
    config: QuantConfig,
    compute: Resolved,
    work: Path,
    progress: bool,
) -> _Blocks:
    """Each decoder block in turn: reuse its shard if an earlier run with the same inputs finished it,
    else search, quantize and write it; its output feeds the next block."""
    n_layers = ckpt.config["num_hidden_layers"]
    embed_name = f"{arch.embed}.weight"
    store_dtype = STORAGE_DTYPES[ckpt.tensors[embed_name].dtype]
    model, hf_config = meta_model(ckpt.dir, compute.dtype)
    rotary = rotary_embedding(model, arch, hf_config, compute.device)
    types = layer_types(hf_config)
    kwargs_of = {t: block_kwargs(rotary, arch, hf_config, t, calib.shape[1], compute) for t in set(types)}
    hidden = embed(calib, ckpt.get(embed_name), arch, hf_config, compute.dtype)  # (N, L, C)
    hidden = hidden.to(activation_device(hidden, compute))
    original = hidden if config.fit_original else None
    blocks = _Blocks()
    desc = f"AWQ blocks ({compute.device} {compute.dtype_name})"
    bar = tqdm(range(n_layers), desc=desc, unit="block", disable=not progress)
    for i in bar:
        block_start = time.perf_counter()
        prefix, shard = f"{arch.layers}.{i}.", work / _shard_name(i, n_layers)
        kwargs = kwargs_of[types[i]]
        block_report = work / ".blocks" / f"{i:05d}.json"
        if block_report.is_file():  # finished by an earlier run with the same inputs
            tensors = {k.removeprefix(prefix): v for k, v in load_file(shard).items()}
            quantized = config.propagate == "quantized"
            state = _dense_block_state(tensors, arch, config) if quantized else ckpt.load_prefix(prefix)
            hidden = run_block(materialize_block(model, arch, i, state, compute), hidden, kwargs)
            if original is not None:
                original = run_block(
                    materialize_block(model, arch, i, ckpt.load_prefix(prefix), compute), original, kwargs
                )
            report = json.loads(block_report.read_text())
            blocks.resumed += 1
        else:
            block = materialize_block(model, arch, i, ckpt.load_prefix(prefix), compute)
            result = quantize_block(block, arch, hidden, kwargs, config, store_dtype, original)
            hidden, tensors, original = result.output, result.tensors, result.original_output
            save_file({prefix + k: v.contiguous() for k, v in tensors.items()}, shard, metadata={"format": "pt"})
            report = {"block_mse": result.output_mse, "layers": [{"block": i, **row} for row in result.layers]}
            _write_json(block_report, report)
        blocks.weight_map |= {prefix + name: shard.name for name in tensors}
        blocks.block_mse.append(report["block_mse"])
        blocks.block_seconds.append(round(time.perf_counter() - block_start, 3))
        blocks.layers += report["layers"]
        bar.set_postfix(out_mse=f"{report['block_mse']:.2e}")
    return blocks


def _write_rest(ckpt: CheckpointFolder, arch: Architecture, config: QuantConfig, work: Path, weight_map: dict) -> None:
    """The last shard (embeddings, final norm, head), the index, config.json and the side files."""
    n_layers = ckpt.config["num_hidden_layers"]
    rest = {name: ckpt.get(name) for name in ckpt.tensors if not name.startswith(f"{arch.layers}.")}
    save_file(rest, work / _shard_name(n_layers, n_layers), metadata={"format": "pt"})
    weight_map = weight_map | {name: _shard_name(n_layers, n_layers) for name in rest}
    _write_json(work / "model.safetensors.index.json", {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))})
    quantized = quantization_config(config.format, config.group_size, not_quantized=[arch.lm_head])
    _write_json(work / "config.json", ckpt.config | {"quantization_config": quantized})
    _copy_side_files(ckpt.dir, work)


def quantize(
    model_dir: str | Path,
    out_dir: str | Path,
    calib: Tensor,
    config: QuantConfig = QuantConfig(),
    progress: bool = True,
    compute: Compute = Compute(),
    finite_checked: str | None = None,
) -> QuantReport:
    """AWQ-quantize `model_dir` into `out_dir` using calibration token ids `calib` (N, L), one block
    at a time on the compute device; weights stream from disk, so only one block is ever resident.
    `finite_checked`: the CheckpointFolder.fingerprint() of weights a caller already checked for
    NaN/Inf (the platform's ingest), so they are not read once more for that."""
    _reset_peak_rss()
    start, start_rss_mb = time.perf_counter(), _rss_mb("VmRSS")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise QuantizationError(f"{out_dir} already exists: remove it or choose another output folder.")
    ckpt, arch = _checked_source(model_dir, calib, config, finite_checked)
    config, gptq_why = config.decided_for(calib.numel())
    resolved = resolve(compute)
    log.info("Quantizing on %s, GPTQ rounding %s (%s)", resolved, "on" if config.gptq else "off", gptq_why)
    if resolved.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(resolved.device)

    work = out_dir.parent / f".{out_dir.name}.partial"
    with _disk_full_is_clear(work, out_dir):
        _open_work_dir(work, _inputs_fingerprint(ckpt, calib, config, resolved))
        blocks = _quantize_blocks(ckpt, arch, calib, config, resolved, work, progress)
        _write_rest(ckpt, arch, config, work, blocks.weight_map)

    calibration = {"n_samples": calib.shape[0], "seqlen": calib.shape[1], "fingerprint": calibration_fingerprint(calib)}
    on_gpu = resolved.device.type == "cuda"
    report = QuantReport(
        out_dir=str(out_dir),
        report_path=str(out_dir / REPORT_NAME),
        seconds=round(time.perf_counter() - start, 2),
        peak_rss_mb=_rss_mb("VmHWM"),
        start_rss_mb=start_rss_mb,
        peak_gpu_mb=round(torch.cuda.max_memory_allocated(resolved.device) / 2**20, 1) if on_gpu else None,
        compute=resolved.describe(),
        resumed_blocks=blocks.resumed,
        block_mse=blocks.block_mse,
        block_seconds=blocks.block_seconds,
        layers=blocks.layers,
        config=dataclasses.asdict(config) | {"gptq_why": gptq_why, "source": str(ckpt.dir), "calibration": calibration},
    )
    with _disk_full_is_clear(work, out_dir):
        _write_json(work / REPORT_NAME, dataclasses.asdict(report))
    shutil.rmtree(work / ".blocks")
    (work / "progress.json").unlink()
    work.rename(out_dir)
    return report
