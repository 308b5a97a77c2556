"""The platform's one Definitions: `dagster dev -w workspace.yaml` loads it.

Folders and the database come from the environment, with a local default under $AWQ_RELEASE_HOME
(./.platform): checkpoints/ (watched), registry/, work/, policy.yaml, lineage.db. The records the
assets hand each other are kept in work/.records by Dagster's filesystem IO manager.
"""

import dagster as dg

from orchestrator.pipeline.assets import RELEASE_ASSETS
from orchestrator.pipeline.jobs import release_job
from orchestrator.pipeline.resources import default_resources
from orchestrator.pipeline.sensors import attempt_failure_sensor, checkpoint_sensor

defs = dg.Definitions(
    assets=RELEASE_ASSETS,
    jobs=[release_job],
    sensors=[checkpoint_sensor, attempt_failure_sensor],
    resources=default_resources(),
)
