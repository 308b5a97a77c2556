"""The release job: the whole chain for one checkpoint partition.

Its steps run one after another in the run's own process: they share one import of torch and the
model stacks instead of one per step, and the gpu pool lets only one of them compute at a time
anyway. A cluster install swaps the executor (orchestrator.pipeline.placement: a pod per step), not the assets."""

import dagster as dg

from orchestrator.pipeline.assets import GROUP
from orchestrator.pipeline.placement import executor

release_job = dg.define_asset_job(
    "release_job",
    selection=dg.AssetSelection.groups(GROUP),
    description="Ingest, quantize, validate and promote one checkpoint.",
    executor_def=executor(),
)
