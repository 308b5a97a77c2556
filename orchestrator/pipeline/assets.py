"""The release chain, one dynamic partition per checkpoint:

checkpoint -> calibration_set -> awq_model -> {perplexity, tasks, long_context}_validation
    -> load_validation and power_check (each after the three quality gates passed) -> release

Each asset records its lineage row and hands the next a small record (orchestrator.release.records): ids
and paths, never a model. Each validation asset emits its stage's gate as a blocking check.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import dagster as dg
from safetensors.torch import load_file, save_file
from sqlalchemy import Engine

from awq_core import QuantReport, build_calibration, quantize
from awq_core.address import quantization_address
from awq_core.calibration import calibration_fingerprint
from awq_core.checkpoint import load_tokenizer
from awq_core.compute import resolve
from awq_core.quantizer import REPORT_NAME
from deploy.engine import Serving
from deploy.registry import safe_name
from orchestrator.lineage.queries import (
    StoredFigures,
    end_attempt,
    finished_quantization,
    known_content_hash,
    measured_power_check,
    note_content,
    promoted_versions,
    record_calibration,
    record_power_check,
    record_power_check_reuse,
    record_quantization,
    record_rejection,
    record_reuse,
    record_stage,
    register_checkpoint,
    released_versions,
    start_attempt,
)
from orchestrator.pipeline.checks import gate_result, gate_spec
from orchestrator.pipeline.metadata import (
    calibration_metadata,
    checkpoint_metadata,
    not_run,
    placement_metadata,
    power_check_metadata,
    quantization_metadata,
    release_metadata,
    stage_metadata,
    stage_plot,
)
from orchestrator.pipeline.partitions import CHECKPOINTS, SOURCE_TAG
from orchestrator.pipeline.placement import GPU_POOL, gpu_op_tags, load_op_tags, load_pool, staging_of
from orchestrator.pipeline.resources import LineageDatabase, Platform, ScoringEngines
from orchestrator.release import plots
from orchestrator.release.hashing import content_hash, file_hash, stat_signature
from orchestrator.release.ingest import ingest
from orchestrator.release.policy import ReleasePolicy
from orchestrator.release.promotion import blocking_stages, promote, reconcile
from orchestrator.release.records import (
    CalibrationRecord,
    CandidateRecord,
    CheckpointRecord,
    PowerCheckRecord,
    StageRecord,
)
from orchestrator.release.reports import rounding_steps
from orchestrator.release.snapshots import PolicySnapshot, run_policy
from validation import STAGES, StageResult, run_stage
from validation.memo import Known
from validation.power import power_check as run_power_check
from validation.power import power_check_address

GROUP = "release"


def source_folder(platform: Platform, key: str) -> Path:
    folders = (p for p in Path(platform.checkpoints_dir).iterdir() if p.is_dir() and not p.name.startswith("."))
    matches = [p for p in folders if safe_name(p.name) == key]
    if len(matches) != 1:
        raise dg.Failure(
            f"{len(matches)} folders in {platform.checkpoints_dir} map to checkpoint {key!r}: expected exactly one."
        )
    return matches[0]


def policy_of(context: dg.AssetExecutionContext, platform: Platform, lineage: LineageDatabase) -> PolicySnapshot:
    """The release policy of this run, as its first step snapshotted it."""
    return run_policy(lineage.engine(), context.run_id, platform.policy_path)


# A run tagged so (`awq-release run --recompute`, or a tag set at launch in the UI) reuses nothing,
# whatever its policy's `reuse` says: the switch for one run, the policy's for every run.
RECOMPUTE_TAG = "awq_release/recompute"


def reuses(context: dg.AssetExecutionContext, policy: ReleasePolicy) -> bool:
    """Whether this run may take finished work from the lineage database instead of doing it again."""
    return policy.reuse and context.run.tags.get(RECOMPUTE_TAG) != "true"


def model_name(policy: ReleasePolicy, key: str) -> str:
    return policy.model_name or key


def serving_of(policy: ReleasePolicy, checkpoint: CheckpointRecord) -> Serving:
    """The policy's engine arguments, on as many GPUs as the footprint check found the model needs."""
    return dataclasses.replace(policy.serving, tensor_parallel_size=checkpoint.tensor_parallel_size)


@dg.asset(partitions_def=CHECKPOINTS, group_name=GROUP, kinds={"safetensors"})
def checkpoint(
    context: dg.AssetExecutionContext, platform: Platform, lineage: LineageDatabase
) -> dg.MaterializeResult[CheckpointRecord]:
    """Verify, merge (LoRA), hash, size and register a dropped checkpoint: the start of an attempt."""
    context.add_asset_metadata(placement_metadata())
    key, engine, run_id = context.partition_key, lineage.engine(), context.run_id
    folder = source_folder(platform, key)
    source = context.run.tags.get(SOURCE_TAG) or stat_signature(folder)  # launched by hand: the folder now
    start_attempt(engine, run_id, key, source)
    policy = policy_of(context, platform, lineage).policy
    found = ingest(folder, platform.work(key), policy, known_content_hash(engine, source))
    note_content(engine, run_id, found.content_hash)
    if released := released_versions(engine, found.content_hash):
        reason = f"the content of {folder.name} was released before, as {', '.join(released)}"
        end_attempt(engine, run_id, "duplicate", reason)
        raise dg.Failure(f"Nothing to do: {reason}. Remove the copy, or change the checkpoint to release it again.")
    checkpoint_id = register_checkpoint(engine, key, found)
    tp = found.footprint["tensor_parallel_size"]
    record = CheckpointRecord(
        checkpoint_id, key, str(found.model_dir), found.weights_fingerprint, found.content_hash, tp
    )
    context.log.info(f"checkpoint {key} verified and registered (sha256 {found.content_hash[:16]}…)")
    return dg.MaterializeResult(value=record, metadata=checkpoint_metadata(record, found))


@dg.asset(partitions_def=CHECKPOINTS, group_name=GROUP)
def calibration_set(
    context: dg.AssetExecutionContext, platform: Platform, lineage: LineageDatabase, checkpoint: CheckpointRecord
) -> dg.MaterializeResult[CalibrationRecord]:
    """N windows of L tokens from the policy's domain texts, saved as token ids."""
    context.add_asset_metadata(placement_metadata())
    settings = policy_of(context, platform, lineage).policy.calibration
    tokenizer = load_tokenizer(checkpoint.model_dir)
    ids = build_calibration(tokenizer, list(settings.texts), settings.n_samples, settings.seqlen)  # (N, L)
    tokens_hash = calibration_fingerprint(ids)
    tokens_path = platform.work(context.partition_key) / f"calibration-{tokens_hash}.safetensors"
    save_file({"input_ids": ids}, tokens_path)
    sources = {str(p): file_hash(Path(p)) for p in settings.texts}
    row_id = record_calibration(
        lineage.engine(), checkpoint.id, sources, settings.n_samples, settings.seqlen, tokens_path, tokens_hash
    )
    metadata = calibration_metadata(row_id, settings.n_samples, settings.seqlen, len(sources), tokens_hash)
    context.log.info(f"calibration set: {settings.n_samples} x {settings.seqlen} tokens from {len(sources)} texts")
    return dg.MaterializeResult(
        value=CalibrationRecord(row_id, checkpoint, str(tokens_path), tokens_hash), metadata=metadata
    )


def awq_model(
    context: dg.AssetExecutionContext, platform: Platform, lineage: LineageDatabase, calibration_set: CalibrationRecord
) -> dg.MaterializeResult[CandidateRecord]:
    """AWQ INT4 checkpoint of the registered model, in the AutoAWQ GEMM layout vLLM serves. A model
    finished before from the same inputs (awq_core.address) whose files still hash as recorded is
    reused, never made again: a retry after a crash in a later step starts past quantization."""
    context.add_asset_metadata(placement_metadata())
    key, snapshot, engine = context.partition_key, policy_of(context, platform, lineage), lineage.engine()
    policy = snapshot.policy
    config = policy.quantization
    ckpt = calibration_set.checkpoint
    compute = resolve(policy.compute)
    address = quantization_address(ckpt.content_hash, calibration_set.tokens_hash, config, compute.address_part)
    out_dir = platform.work(key) / f"awq-{address[:16]}"
    made_by = reusable_quantization(engine, address, out_dir) if reuses(context, policy) else None
    if made_by is not None:
        run_id, made_hash = record_reuse(engine, made_by, ckpt.id, calibration_set.id, snapshot.id)
        report = QuantReport(**json.loads((out_dir / REPORT_NAME).read_text()))
        context.log.info(f"quantization reused: run {made_by} made {out_dir.name} from the same inputs")
    else:
        if out_dir.exists():  # finished but never recorded, or changed since: make it afresh
            shutil.rmtree(out_dir)
        calib = load_file(calibration_set.tokens_path)["input_ids"]
        context.log.info(f"quantizing {ckpt.name}: {config.method}, group {config.group_size}, {config.format} format")
        report = quantize(
            ckpt.model_dir,
            out_dir,
            calib,
            config,
            progress=True,  # a bar per block: on the terminal of `awq-release run`, in the run's stderr log in the UI
            compute=policy.compute,
            finite_checked=ckpt.weights_fingerprint,
        )
        context.log.info(
            f"quantized in {report.seconds:.0f} s on {report.compute['device']} {report.compute['dtype']}: "
            f"{rounding_steps(report.config)}"
        )
        made_hash = output_hash(out_dir)
        run_id = record_quantization(engine, ckpt.id, calibration_set.id, snapshot.id, report, made_hash, address)
    plot = plots.layer_errors(report.block_mse, platform.work(key) / "plots" / f"layer_errors-{run_id}.png")
    record = CandidateRecord(run_id, ckpt, str(out_dir), made_hash, str(plot))
    metadata = quantization_metadata(record, report, config.group_size)
    if made_by is not None:
        metadata["reused_from_run"] = made_by
    return dg.MaterializeResult(value=record, metadata=metadata)


def output_hash(out_dir: Path) -> str:
    """A quantized model's identity: its tensors, config and side files, not the report's timings."""
    return content_hash(out_dir, skip={REPORT_NAME})


def reusable_quantization(engine: Engine, address: str, out_dir: Path) -> int | None:
    """The run that made the model at `address` into `out_dir`, where its files still hash as it recorded."""
    finished = finished_quantization(engine, address)
    if finished is None:
        return None
    made_by, path, recorded_hash = finished
    intact = Path(path) == out_dir and out_dir.is_dir() and output_hash(out_dir) == recorded_hash
    return made_by if intact else None


def write_report(result: StageResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=1, default=str))
    return path


def validation_asset(
    stage: str, op_tags: dict[str, str], pool: str | None = GPU_POOL, after: list[dg.AssetsDefinition] | None = None
) -> dg.AssetsDefinition:
    """One validation stage as an asset that emits its blocking gate; `pool`: the concurrency pool it
    holds a slot of while it runs (None: none); `after`: stages whose gates must pass first (a failed
    blocking gate skips it)."""
    name = f"{stage}_validation"

    @dg.asset(
        name=name,
        partitions_def=CHECKPOINTS,
        group_name=GROUP,
        pool=pool,
        op_tags=op_tags,
        deps=after,
        check_specs=[gate_spec(stage, name)],
        dagster_type=StageRecord,  # with a check beside it, the return annotation cannot carry the type
    )
    def stage_asset(
        context: dg.AssetExecutionContext,
        platform: Platform,
        lineage: LineageDatabase,
        scoring: ScoringEngines,
        awq_model: CandidateRecord,
    ) -> dg.MaterializeResult:
        context.add_asset_metadata(placement_metadata())
        key, policy = context.partition_key, policy_of(context, platform, lineage).policy
        # The load stage starts the engine arguments the release will ship, on the target GPU nodes where
        # it stages them on the cluster; its server logs go beside the reports.
        load = dataclasses.replace(
            policy.validation.load,
            log_dir=platform.work(key) / "logs",
            serving=serving_of(policy, awq_model.checkpoint),
            staging=staging_of(policy),
        )
        settings = dataclasses.replace(policy.validation, load=load)
        known = known_figures(lineage, context.run_id, awq_model) if reuses(context, policy) else None
        engines = scoring.engines(settings, resolve(policy.compute))  # shared with the other quality stages
        result = run_stage(
            stage, awq_model.checkpoint.model_dir, awq_model.model_dir, settings, policy.compute, known, engines
        )
        report = write_report(result, platform.work(key) / "validation" / f"{stage}-{awq_model.id}.json")
        plot = stage_plot(result, report.parent / f"{stage}-{awq_model.id}")
        engine = lineage.engine()
        stage_id = record_stage(engine, awq_model.id, result, str(report))
        if result.status == "skipped":
            context.log.warning(f"{stage} skipped, as the policy allows: {result.skipped}")
        else:
            reused = f" ({' and '.join(result.reused)} figures measured before)" if result.reused else ""
            context.log.info(f"{stage}: {result.status} in {result.seconds:.0f} s{reused}")
        if result.status == "failed":
            reason = f"{stage} gate failed: " + "; ".join(result.reasons)
            version = record_rejection(engine, model_name(policy, key), awq_model.id, reason)
            end_attempt(engine, context.run_id, "rejected", reason)
            context.log.warning(f"{stage} gate failed; recorded rejected release {version}: {result.reasons}")
        record = StageRecord(
            stage_id, stage, awq_model.id, result.status, tuple(result.reasons), str(plot) if plot else None
        )
        return dg.MaterializeResult(
            value=record,
            metadata=stage_metadata(result, stage_id, report, plot),
            check_results=[gate_result(result)],
        )

    return stage_asset


def known_figures(lineage: LineageDatabase, run_id: str, awq_model: CandidateRecord) -> Known:
    """The figures the lineage database keeps, for the baseline and the candidate by their content hashes."""
    ckpt = awq_model.checkpoint
    models = {ckpt.model_dir: ckpt.content_hash, awq_model.model_dir: awq_model.output_hash}
    return Known(StoredFigures(lineage.engine(), run_id), models)


def power_check(
    context: dg.AssetExecutionContext, platform: Platform, lineage: LineageDatabase, awq_model: CandidateRecord
) -> dg.MaterializeResult[PowerCheckRecord]:
    """Plant known damage into copies of the candidate and run the quality stages on each: could these
    gates have caught anything? Runs after they passed, where the policy's validation.power_check.run
    says. Its table is reused from the newest check at the same address (validation.power): the same
    validation and quantization settings on a fine-tune of the same base model."""
    context.add_asset_metadata(placement_metadata())
    key, policy, engine = context.partition_key, policy_of(context, platform, lineage).policy, lineage.engine()
    if not policy.validation.power_check.run:
        record = PowerCheckRecord(awq_model.id, (), 0, 0)
        return dg.MaterializeResult(value=record, metadata=not_run("validation.power_check.run is false"))
    baseline = awq_model.checkpoint.model_dir
    compute = resolve(policy.compute)
    address = power_check_address(baseline, policy.validation, policy.quantization.fingerprint(), compute)
    measured = measured_power_check(engine, address) if reuses(context, policy) else []
    if measured:
        ids, report = record_power_check_reuse(engine, awq_model.id, context.run_id, measured)
        context.log.info(f"power check reused: outcomes {measured} were measured at the same address")
    else:
        known = known_figures(lineage, context.run_id, awq_model) if reuses(context, policy) else None
        work = platform.work(key)
        report = run_power_check(baseline, awq_model.model_dir, policy.validation, work, policy.compute, known)
        ids = record_power_check(engine, awq_model.id, context.run_id, report, address)
    if report.blind:
        context.log.warning(f"The gates caught none of the {len(ids)} planted damages: the release will say so.")
    record = PowerCheckRecord(awq_model.id, tuple(ids), report.caught, len(ids))
    context.log.info(f"power check: the gates caught {report.caught} of {len(ids)} planted damages")
    return dg.MaterializeResult(value=record, metadata=power_check_metadata(report, measured))


VALIDATION_NAMES = [f"{stage}_validation" for stage in STAGES]


@dg.asset(partitions_def=CHECKPOINTS, group_name=GROUP, ins={name: dg.AssetIn(name) for name in VALIDATION_NAMES})
def release(
    context: dg.AssetExecutionContext,
    platform: Platform,
    lineage: LineageDatabase,
    awq_model: CandidateRecord,
    power_check: PowerCheckRecord,
    **validations: StageRecord,
) -> dg.MaterializeResult:
    """Promote the candidate into the registry, only if the latest result of every gate passed. Its
    model card carries the power check's table, and says so where the gates caught no damage."""
    context.add_asset_metadata(placement_metadata())
    key, snapshot = context.partition_key, policy_of(context, platform, lineage)
    model, engine = model_name(snapshot.policy, key), lineage.engine()
    blocking = blocking_stages(awq_model, {record.stage: record for record in validations.values()})
    if blocking:
        reason = f"release refused: the latest validation of {blocking} did not pass"
        record_rejection(engine, model, awq_model.id, reason)
        end_attempt(engine, context.run_id, "rejected", reason)
        raise dg.Failure(
            f"Refusing to promote {key}: the latest validation of {blocking} did not pass (see the lineage database)."
        )
    for repair in reconcile(engine, Path(platform.registry_dir), model):
        context.log.warning(repair)
    if promoted := promoted_versions(engine, awq_model.id):
        raise dg.Failure(f"Quantization run {awq_model.id} of {key} is already released as {promoted}.")
    plotted = [("quantization", awq_model.plot)] + [(r.stage, r.plot) for r in validations.values()]
    figures = {name: Path(plot) for name, plot in plotted if plot}
    serving = serving_of(snapshot.policy, awq_model.checkpoint)
    registry = Path(platform.registry_dir)
    promotion = promote(engine, registry, model, awq_model.id, snapshot, serving, context.run_id, figures)
    end_attempt(engine, context.run_id, "released", f"{model} {promotion.version}")
    context.log.info(f"released {model} {promotion.version} at {promotion.path}")
    return dg.MaterializeResult(metadata=release_metadata(promotion))


def release_assets(placement: ReleasePolicy) -> list[dg.AssetsDefinition]:
    """The release chain, its GPU steps tagged for the policy's target GPU (a pod per step on
    Kubernetes reads the tags; in process they are ignored). Built when the definitions load, so no
    module reads the policy file when it is imported."""
    gpu_tags = gpu_op_tags(placement.target_gpu)
    gpu_step = {"partitions_def": CHECKPOINTS, "group_name": GROUP, "pool": GPU_POOL, "op_tags": gpu_tags}
    quality = [validation_asset(stage, gpu_tags) for stage in STAGES if stage != "load"]
    # The load test holds the serving hardware (a GPU in production) for minutes: spent only on a
    # candidate whose quality gates passed; it asks for GPUs only where it starts its own server.
    load = validation_asset("load", load_op_tags(placement), load_pool(placement), after=quality)
    return [
        checkpoint,
        calibration_set,
        dg.asset(name="awq_model", kinds={"pytorch"}, **gpu_step)(awq_model),
        *quality,
        load,
        # After the quality gates passed: a failed blocking gate skips it.
        dg.asset(name="power_check", deps=quality, **gpu_step)(power_check),
        release,
    ]
