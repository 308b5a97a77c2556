"""One dynamic partition per dropped checkpoint: the sensor adds them, every asset is split by them."""

import dagster as dg

CHECKPOINTS = dg.DynamicPartitionsDefinition(name="checkpoints")
