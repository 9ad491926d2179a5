"""Quantized frozen bases: bitsandbytes replacement of Linear layers."""
