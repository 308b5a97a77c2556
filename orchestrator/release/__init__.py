"""The release domain: the policy schema and each run's snapshot of it, ingest, promotion, the
manifest and model card, plots."""
