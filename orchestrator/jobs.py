"""The release job: the whole chain for one checkpoint partition."""

import dagster as dg

from orchestrator.assets import GROUP

release_job = dg.define_asset_job(
    "release_job",
    selection=dg.AssetSelection.groups(GROUP),
    description="Ingest, quantize, validate and promote one checkpoint.",
)
