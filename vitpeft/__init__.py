"""vitpeft: a reproducible study of parameter-efficient fine-tuning of Vision Transformers."""

__version__ = "0.1.0"
