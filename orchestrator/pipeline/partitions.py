"""One dynamic partition per dropped checkpoint: the sensor adds them, every asset is split by them.
Each run the sensor requests is tagged with the folder's stat signature, its source."""

import dagster as dg

CHECKPOINTS = dg.DynamicPartitionsDefinition(name="checkpoints")
SOURCE_TAG = "awq_release/source"
