"""Serving and promotion of quantized releases."""
