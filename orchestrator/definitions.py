"""The platform's one Definitions: `dagster dev -w workspace.yaml` loads it.

Folders and the database come from the environment (orchestrator.environment), with a local
default under $AWQ_RELEASE_HOME (./.platform): checkpoints/ (watched), registry/, work/,
policy.yaml, lineage.db. The records the assets hand each other are kept in work/.records by
Dagster's filesystem IO manager. The release policy's target_gpu places the GPU steps; it is read
when the code location loads the definitions, not when this module is imported: after editing
target_gpu, reload the code location.
"""

import dagster as dg

from orchestrator import environment
from orchestrator.pipeline.assets import release_assets
from orchestrator.pipeline.jobs import release_job
from orchestrator.pipeline.resources import default_resources
from orchestrator.pipeline.sensors import attempt_failure_sensor, checkpoint_sensor
from orchestrator.release.policy import ReleasePolicy, policy_or_defaults


def build_definitions(placement: ReleasePolicy | None = None) -> dg.Definitions:
    """Assets, job, sensors and resources; `placement`: the policy whose target_gpu tags the GPU
    steps (default: the policy file, or the defaults while there is none)."""
    return dg.Definitions(
        assets=release_assets(placement or policy_or_defaults(environment.policy_path())),
        jobs=[release_job],
        sensors=[checkpoint_sensor, attempt_failure_sensor],
        resources=default_resources(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()


def release_job_definition() -> dg.JobDefinition:
    """The release job with its resources: what `dg.reconstructable` points a run's other processes
    (Celery workers) at, so each of them builds the same job from its own environment."""
    return build_definitions().resolve_job_def("release_job")
