"""Validation stages that compare a quantized candidate with its unquantized baseline."""
