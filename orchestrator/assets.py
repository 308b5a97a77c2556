"""The release chain, one dynamic partition per checkpoint:

checkpoint -> calibration_set -> awq_model -> {perplexity, tasks, long_context, load}_validation -> release

Assets hand each other database rows (found by partition key) and paths, never pickled objects.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import dagster as dg
from safetensors.torch import load_file, save_file
from sqlalchemy import select
from transformers import AutoTokenizer

from awq_core import build_calibration, quantize
from awq_core.calibration import calibration_fingerprint
from deploy.registry import current_version, publish, safe_name, unpublish
from orchestrator import plots
from orchestrator.db import session_scope
from orchestrator.db.models import CalibrationSet, Checkpoint, QuantizationRun, Release
from orchestrator.ingest import content_hash, file_hash, ingest
from orchestrator.lineage import (
    latest,
    latest_checkpoint,
    latest_quantization,
    record_rejection,
    record_release,
    record_stage,
)
from orchestrator.releases import latest_stages
from orchestrator.reports import metrics_table, model_card
from orchestrator.resources import LineageDatabase, Platform
from validation import STAGES, run_stage

CHECKPOINTS = dg.DynamicPartitionsDefinition(name="checkpoints")
GROUP = "release"
HEAVY_POOL = "heavy"  # quantization and model evaluation: one at a time per machine (dagster.yaml sets the limit)


def source_folder(platform: Platform, key: str) -> Path:
    matches = [
        p
        for p in Path(platform.checkpoints_dir).iterdir()
        if p.is_dir() and not p.name.startswith(".") and safe_name(p.name) == key
    ]
    if len(matches) != 1:
        raise dg.Failure(
            f"{len(matches)} folders in {platform.checkpoints_dir} map to checkpoint {key!r}: expected exactly one."
        )
    return matches[0]


def model_name(platform: Platform, key: str) -> str:
    return platform.policy().model_name or key


@dg.asset(partitions_def=CHECKPOINTS, group_name=GROUP, kinds={"safetensors"})
def checkpoint(context: dg.AssetExecutionContext, platform: Platform, lineage: LineageDatabase) -> dg.MaterializeResult:
    """Verify, merge (LoRA), hash, size and register a dropped checkpoint."""
    key = context.partition_key
    found = ingest(source_folder(platform, key), platform.work(key), platform.policy())
    with session_scope(lineage.engine()) as session:
        row = session.scalars(select(Checkpoint).where(Checkpoint.content_hash == found.content_hash)).first()
        if row is None:
            row = Checkpoint(
                name=key,
                path=str(found.model_dir),
                content_hash=found.content_hash,
                base_model=found.base_model,
                adapter_path=found.adapter_path,
                architecture=found.architecture,
                size_bytes=found.size_bytes,
            )
            session.add(row)
            session.flush()
        checkpoint_id = row.id
    fit = found.footprint
    return dg.MaterializeResult(
        metadata={
            "checkpoint_id": checkpoint_id,
            "path": dg.MetadataValue.path(str(found.model_dir)),
            "content_hash": found.content_hash,
            "size_mib": round(found.size_bytes / 2**20, 1),
            "architecture": found.architecture,
            "lora_adapter": found.adapter_path or "none",
            "footprint": dg.MetadataValue.md(
                f"| 4-bit weights GiB | KV cache GiB | usable GiB | fits |\n|---|---|---|---|\n"
                f"| {fit['weights_gib']:.2f} | {fit['kv_cache_gib']:.2f} | {fit['usable_gib']:.1f} | {fit['fits']} |"
            ),
        }
    )


@dg.asset(partitions_def=CHECKPOINTS, group_name=GROUP, deps=[checkpoint])
def calibration_set(
    context: dg.AssetExecutionContext, platform: Platform, lineage: LineageDatabase
) -> dg.MaterializeResult:
    """N windows of L tokens from the policy's domain texts, saved as token ids."""
    key, policy = context.partition_key, platform.policy().calibration
    engine = lineage.engine()
    with session_scope(engine) as session:
        ckpt = latest_checkpoint(session, key)
        model_dir, checkpoint_id = ckpt.path, ckpt.id
    ids = build_calibration(
        AutoTokenizer.from_pretrained(model_dir), list(policy.texts), policy.n_samples, policy.seqlen
    )
    tokens_hash = calibration_fingerprint(ids)
    tokens_path = platform.work(key) / f"calibration-{tokens_hash}.safetensors"
    save_file({"input_ids": ids}, tokens_path)
    sources = {str(p): file_hash(Path(p)) for p in policy.texts}
    with session_scope(engine) as session:
        row = CalibrationSet(
            checkpoint_id=checkpoint_id,
            source_hashes=sources,
            n_samples=policy.n_samples,
            seqlen=policy.seqlen,
            tokens_path=str(tokens_path),
            tokens_hash=tokens_hash,
        )
        session.add(row)
        session.flush()
        row_id = row.id
    return dg.MaterializeResult(
        metadata={
            "calibration_set_id": row_id,
            "samples": policy.n_samples,
            "seqlen": policy.seqlen,
            "sources": len(sources),
            "tokens_hash": tokens_hash,
        }
    )


@dg.asset(partitions_def=CHECKPOINTS, group_name=GROUP, deps=[calibration_set], pool=HEAVY_POOL, kinds={"pytorch"})
def awq_model(context: dg.AssetExecutionContext, platform: Platform, lineage: LineageDatabase) -> dg.MaterializeResult:
    """AWQ INT4 checkpoint of the registered model, in the AutoAWQ GEMM layout vLLM serves."""
    key, policy = context.partition_key, platform.policy()
    config = policy.quantization
    engine = lineage.engine()
    with session_scope(engine) as session:
        ckpt = latest_checkpoint(session, key)
        calib = latest(session, CalibrationSet, checkpoint_id=ckpt.id)
        model_dir, checkpoint_id, calib_id, tokens_path = ckpt.path, ckpt.id, calib.id, calib.tokens_path
    out_dir = platform.work(key) / f"awq-{calib.tokens_hash}-{config.fingerprint()}"
    if out_dir.exists():  # a re-materialization with the same inputs: make it afresh
        shutil.rmtree(out_dir)
    report = quantize(
        model_dir, out_dir, load_file(tokens_path)["input_ids"], config, progress=False, compute=policy.compute
    )
    with session_scope(engine) as session:
        row = QuantizationRun(
            checkpoint_id=checkpoint_id,
            calibration_set_id=calib_id,
            settings=report.config | {"compute": report.compute},
            seconds=report.seconds,
            peak_rss_mb=report.peak_rss_mb,
            layer_errors=report.layers,
            block_mse=report.block_mse,
            output_path=str(out_dir),
            output_hash=content_hash(out_dir),
        )
        session.add(row)
        session.flush()
        run_id = row.id
    figure = plots.layer_errors(report.block_mse, platform.work(key) / "plots" / "layer_errors.png")
    size = sum(p.stat().st_size for p in out_dir.glob("*.safetensors"))
    return dg.MaterializeResult(
        metadata={
            "quantization_run_id": run_id,
            "path": dg.MetadataValue.path(str(out_dir)),
            "size_mib": round(size / 2**20, 1),
            "seconds": report.seconds,
            "peak_rss_mib": report.peak_rss_mb,
            "peak_gpu_mib": report.peak_gpu_mb or 0.0,
            "group_size": config.group_size,
            "device": report.compute["device"],
            "dtype": report.compute["dtype"],
            "compute_choice": report.compute["why"],
            "layer_errors": dg.MetadataValue.md(plots.embed(figure, "output MSE per block")),
            "layer_errors_png": dg.MetadataValue.path(str(figure)),
        }
    )


def _stage_plot(result, directory: Path) -> dict:
    if result.stage == "long_context" and result.metrics:
        figure = plots.perplexity_by_length(result.details["by_length"], directory / "long_context.png")
    elif result.stage == "load" and result.details.get("levels"):
        figure = plots.latency_percentiles(result.details["levels"], directory / "latency.png")
    else:
        return {}
    return {
        "plot": dg.MetadataValue.md(plots.embed(figure, result.stage)),
        "plot_png": dg.MetadataValue.path(str(figure)),
    }


def validation_asset(stage: str, attribute: str) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    """One validation stage as an asset, and its blocking gate as an ERROR-severity asset check."""

    @dg.asset(
        name=f"{attribute}_validation", partitions_def=CHECKPOINTS, group_name=GROUP, deps=[awq_model], pool=HEAVY_POOL
    )
    def stage_asset(
        context: dg.AssetExecutionContext, platform: Platform, lineage: LineageDatabase
    ) -> dg.MaterializeResult:
        key = context.partition_key
        engine = lineage.engine()
        with session_scope(engine) as session:
            run = latest_quantization(session, key)
            baseline, candidate, run_id = session.get(Checkpoint, run.checkpoint_id).path, run.output_path, run.id
        policy = platform.policy()
        settings = policy.validation
        settings = dataclasses.replace(
            settings, load=dataclasses.replace(settings.load, log_dir=platform.work(key) / "logs")
        )  # server logs beside the reports
        result = run_stage(stage, baseline, candidate, settings, policy.compute)
        report = platform.work(key) / "validation" / f"{attribute}-{run_id}.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result.to_dict(), indent=1, default=str))
        stage_id = record_stage(engine, run_id, result, str(report))
        if result.status == "skipped":
            context.log.warning(f"{attribute} skipped, as the policy allows: {result.skipped}")
        if result.status == "failed":
            version = record_rejection(
                engine, model_name(platform, key), key, f"{attribute} gate failed: " + "; ".join(result.reasons)
            )
            context.log.warning(f"{attribute} gate failed; recorded rejected release {version}: {result.reasons}")
        return dg.MaterializeResult(
            metadata={
                "status": result.status,
                "passed": result.passed,
                "validation_stage_id": stage_id,
                "seconds": round(result.seconds, 1),
                "compute": dg.MetadataValue.json(result.compute or {}),
                "reasons": dg.MetadataValue.json(result.reasons),
                "metrics": dg.MetadataValue.md(metrics_table(result.metrics)),
                "report": dg.MetadataValue.path(str(report)),
                "warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in result.warnings) or "none"),
                **_stage_plot(result, report.parent),
            }
        )

    @dg.asset_check(asset=stage_asset, name=f"{attribute}_gate", blocking=True)
    def gate(context: dg.AssetCheckExecutionContext, lineage: LineageDatabase) -> dg.AssetCheckResult:
        with session_scope(lineage.engine()) as session:
            run = latest_quantization(session, context.partition_key)
            row = latest_stages(session, run.id).get(attribute)
            if row is None:
                return dg.AssetCheckResult(
                    passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata={"reason": "no result recorded"}
                )
            table = {m.metric: {"value": m.value, "threshold": m.threshold, "passed": m.passed} for m in row.metrics}
            # A stage the policy lets skip is not a pass: it shows as a failed warning, which blocks nothing.
            severity = dg.AssetCheckSeverity.WARN if row.status == "skipped" else dg.AssetCheckSeverity.ERROR
            return dg.AssetCheckResult(
                passed=row.status == "passed",
                severity=severity,
                metadata={
                    "status": row.status,
                    "reasons": dg.MetadataValue.json(row.reasons),
                    "metrics": dg.MetadataValue.json(table),
                },
            )

    return stage_asset, gate


VALIDATIONS = [validation_asset(stage, attribute) for stage, (_, attribute) in STAGES.items()]


@dg.asset(partitions_def=CHECKPOINTS, group_name=GROUP, deps=[asset for asset, _ in VALIDATIONS])
def release(context: dg.AssetExecutionContext, platform: Platform, lineage: LineageDatabase) -> dg.MaterializeResult:
    """Promote the candidate into the registry, only if the latest result of every gate passed."""
    key, policy = context.partition_key, platform.policy()
    model = model_name(platform, key)
    engine = lineage.engine()
    with session_scope(engine) as session:
        run = latest_quantization(session, key)
        stages = latest_stages(session, run.id)
        failing = [s for _, s in STAGES.values() if s not in stages or stages[s].status == "failed"]
        promoted = session.scalars(
            select(Release.version).where(Release.quantization_run_id == run.id, Release.status == "promoted")
        ).all()
    if failing:
        record_rejection(engine, model, key, f"release refused: the latest validation of {failing} did not pass")
        raise dg.Failure(
            f"Refusing to promote {key}: the latest validation of {failing} did not pass (see the lineage database)."
        )
    if promoted:
        raise dg.Failure(f"Quantization run {run.id} of {key} is already released as {promoted}.")

    registry = Path(platform.registry_dir)
    previous = current_version(registry, model)
    published = None
    try:
        with session_scope(engine) as session:  # the release row commits only if the folder was published
            run = session.get(
                QuantizationRun, run.id
            )  # the run whose gates were checked above, even if a newer one landed since
            ckpt = session.get(Checkpoint, run.checkpoint_id)
            calib = session.get(CalibrationSet, run.calibration_set_id)
            row = record_release(session, model, "promoted", ckpt.id, run.id, {})
            manifest = {
                "model": model,
                "version": row.version,
                "release_id": row.id,
                "checkpoint": {
                    "id": ckpt.id,
                    "name": ckpt.name,
                    "content_hash": ckpt.content_hash,
                    "base_model": ckpt.base_model,
                    "adapter": ckpt.adapter_path,
                },
                "calibration": {
                    "id": calib.id,
                    "tokens_hash": calib.tokens_hash,
                    "n_samples": calib.n_samples,
                    "seqlen": calib.seqlen,
                    "sources": calib.source_hashes,
                },
                "quantization": {
                    "id": run.id,
                    "settings": run.settings,
                    "output_hash": run.output_hash,
                    "seconds": run.seconds,
                },
                "files": {p.name: file_hash(p) for p in sorted(Path(run.output_path).iterdir()) if p.is_file()},
                "validation": {
                    s: {
                        "status": r.status,
                        "passed": r.passed,
                        "reasons": r.reasons,
                        "compute": r.compute,
                        "metrics": {
                            m.metric: {"baseline": m.baseline, "candidate": m.candidate, "threshold": m.threshold}
                            for m in r.metrics
                        },
                    }
                    for s, r in latest_stages(session, run.id).items()
                },
            }
            card = model_card(manifest)
            published = publish(
                registry, model, row.version, Path(run.output_path), manifest, card, dataclasses.asdict(policy.serving)
            )
            row.manifest, row.path, version = manifest, str(published), row.version
    except Exception:
        if published is not None:
            unpublish(registry, model, version, previous)
        raise
    return dg.MaterializeResult(
        metadata={
            "version": version,
            "path": dg.MetadataValue.path(str(published)),
            "previous": previous or "none",
            "report": dg.MetadataValue.md(card),
            "launch_config": dg.MetadataValue.path(str(published / "vllm-config.yaml")),
        }
    )
