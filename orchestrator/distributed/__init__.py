"""Steps beyond the run's own process: Dagster's Celery executor on a Redis broker, its workers, and
the claims that keep a step from running twice or being lost with its worker."""
