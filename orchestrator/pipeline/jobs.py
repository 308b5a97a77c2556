"""The release job: the whole chain for one checkpoint partition.

Its steps run one after another in the run's own process by default: they share one import of torch
and the model stacks instead of one per step, and the gpu pool lets only one of them compute at a
time anyway. Across machines the executor changes (orchestrator.pipeline.placement: a Celery task or
a pod per step), not the assets. Wherever a step ran, the process that ran it records where.
"""

from datetime import UTC, datetime

import dagster as dg

from orchestrator.distributed.placement import placement
from orchestrator.lineage.queries import record_placement
from orchestrator.pipeline.assets import GROUP
from orchestrator.pipeline.placement import executor


def _record_placement(context: dg.HookContext, status: str) -> None:
    stats = context.instance.get_run_step_stats(context.run_id, step_keys=[context.step_key])
    started = stats[0].start_time if stats and stats[0].start_time else None
    run = context.instance.get_run_by_id(context.run_id)
    record_placement(
        context.resources.lineage.engine(),
        context.run_id,
        context.step_key,
        run.tags.get("dagster/partition") if run else None,
        status=status,
        started_at=datetime.fromtimestamp(started, UTC) if started else None,
        **placement(),
    )


@dg.success_hook(required_resource_keys={"lineage"})
def placed_success(context: dg.HookContext) -> None:
    _record_placement(context, "success")


@dg.failure_hook(required_resource_keys={"lineage"})
def placed_failure(context: dg.HookContext) -> None:
    _record_placement(context, "failure")


release_job = dg.define_asset_job(
    "release_job",
    selection=dg.AssetSelection.groups(GROUP),
    description="Ingest, quantize, validate and promote one checkpoint.",
    executor_def=executor(),
    hooks={placed_success, placed_failure},
)
