"""The Dagster surface: assets and their gate checks, sensors, the job, partitions and resources."""
