"""What each asset shows in the Dagster UI: figures, tables, paths and plots, built from its results."""

import re
from pathlib import Path

import dagster as dg

from awq_core import QuantReport
from orchestrator.distributed.placement import placement
from orchestrator.release import plots
from orchestrator.release.ingest import Ingested
from orchestrator.release.promotion import Promotion
from orchestrator.release.records import CandidateRecord, CheckpointRecord
from orchestrator.release.reports import metrics_table, power_summary, power_table
from validation import StageResult
from validation.result import PowerReport

NOT_RUN = "not run"  # how a step's `status` metadata begins where the policy gave it nothing to do


def not_run(why: str) -> dict:
    return {"status": f"{NOT_RUN}: {why}"}


def did_not_run(metadata: dict) -> bool:
    status = metadata.get("status")
    return str(getattr(status, "value", status or "")).startswith(NOT_RUN)


def placement_metadata() -> dict:
    """Where the calling step runs: its host, worker and device, as its lineage row records them."""
    return {"placement": dg.MetadataValue.json(placement())}


def _mib(size_bytes: int) -> float:
    return round(size_bytes / 2**20, 1)


def _plot(path: Path, title: str) -> dict:
    return {"plot": dg.MetadataValue.md(plots.embed(path, title)), "plot_png": dg.MetadataValue.path(str(path))}


def checkpoint_metadata(record: CheckpointRecord, found: Ingested) -> dict:
    fit = found.footprint
    footprint = (
        "| 4-bit weights GiB | KV cache GiB | usable GiB | tensor parallel | fits |\n|---|---|---|---|---|\n"
        f"| {fit['weights_gib']:.2f} | {fit['kv_cache_gib']:.2f} | {fit['usable_gib']:.1f} "
        f"| {fit['tensor_parallel_size']} | {fit['fits']} |"
    )
    return {
        "checkpoint_id": record.id,
        "path": dg.MetadataValue.path(record.model_dir),
        "content_hash": found.content_hash,
        "size_mib": _mib(found.size_bytes),
        "architecture": found.architecture,
        "lora_adapter": found.adapter_path or "none",
        "footprint": dg.MetadataValue.md(footprint),
    }


def calibration_metadata(calibration_set_id: int, n_samples: int, seqlen: int, sources: int, tokens_hash: str) -> dict:
    return {
        "calibration_set_id": calibration_set_id,
        "samples": n_samples,
        "seqlen": seqlen,
        "sources": sources,
        "tokens_hash": tokens_hash,
    }


def quantization_metadata(record: CandidateRecord, report: QuantReport, group_size: int) -> dict:
    size = sum(p.stat().st_size for p in Path(record.model_dir).glob("*.safetensors"))
    return {
        "quantization_run_id": record.id,
        "path": dg.MetadataValue.path(record.model_dir),
        "size_mib": _mib(size),
        "seconds": report.seconds,
        "peak_rss_mib": report.peak_rss_mb,
        "peak_gpu_mib": report.peak_gpu_mb or 0.0,
        "group_size": group_size,
        "device": report.compute["device"],
        "dtype": report.compute["dtype"],
        "compute_choice": report.compute["why"],
        "layer_errors": dg.MetadataValue.md(plots.embed(Path(record.plot), "output MSE per block")),
        "layer_errors_png": dg.MetadataValue.path(record.plot),
    }


LENGTH_GATE = re.compile(r"perplexity increase at (\d+) tokens")
SLA_GATE = re.compile(r"c=\d+ (TTFT p90|ITL p90|end-to-end p99) s")
SLA_FIGURES = {"TTFT p90": ("ttft_s", "p90"), "ITL p90": ("itl_s", "p90"), "end-to-end p99": ("e2e_s", "p99")}


def stage_plot(result: StageResult, directory: Path) -> Path | None:
    """Perplexity by context length, or latency percentiles per concurrency level, where measured,
    each with its gates' thresholds (and intervals, where the stage measures them)."""
    if result.stage == "long_context" and result.metrics:
        gated = [(int(match[1]), m) for m in result.metrics if (match := LENGTH_GATE.fullmatch(m.name))]
        increases = {n: (m.value, m.interval) for n, m in gated}
        ceiling = gated[0][1].threshold
        return plots.perplexity_by_length(
            result.details["by_length"], increases, ceiling, directory / "long_context.png"
        )
    if result.stage == "load" and result.details.get("levels"):
        ceilings = {
            SLA_FIGURES[match[1]][0]: (SLA_FIGURES[match[1]][1], m.threshold)
            for m in result.metrics
            if (match := SLA_GATE.fullmatch(m.name))
        }
        return plots.latency_percentiles(result.details["levels"], ceilings, directory / "latency.png")
    return None


def stage_metadata(result: StageResult, stage_id: int, report_path: Path, plot: Path | None) -> dict:
    return {
        "status": result.status,
        "passed": result.passed,
        "validation_stage_id": stage_id,
        "seconds": round(result.seconds, 1),
        "compute": dg.MetadataValue.json(result.compute or {}),
        # The models whose figures an earlier run or step measured (validation.memo): not measured again.
        "figures_reused": ", ".join(result.reused) or "none",
        "reasons": dg.MetadataValue.json(result.reasons),
        "metrics": dg.MetadataValue.md(metrics_table(result.metrics)),
        "report": dg.MetadataValue.path(str(report_path)),
        "warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in result.warnings) or "none"),
        **(_plot(plot, result.stage) if plot else {}),
    }


def power_check_metadata(report: PowerReport, reused_outcomes: list[int]) -> dict:
    """`reused_outcomes`: the recorded outcomes this check took instead of planting damage again."""
    power = report.to_dict()
    return {
        "caught": power["caught"],
        "planted": power["planted"],
        "blind": power["blind"],
        "summary": power_summary(power),
        "table": dg.MetadataValue.md(power_table(power)),
        "reused_outcomes": dg.MetadataValue.json(reused_outcomes),
        "seconds": 0.0 if reused_outcomes else round(sum(o.seconds for o in report.outcomes), 1),
    }


def release_metadata(promotion: Promotion) -> dict:
    return {
        "version": promotion.version,
        "path": dg.MetadataValue.path(str(promotion.path)),
        "previous": promotion.previous or "none",
        "report": dg.MetadataValue.md(promotion.model_card),
        "launch_config": dg.MetadataValue.path(str(promotion.path / "vllm-config.yaml")),
    }
