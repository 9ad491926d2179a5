"""vitpeft: a reproducible study of parameter-efficient fine-tuning of Vision Transformers."""

import logging

__version__ = "0.1.0"

# On a CPU with AVX512-BF16, importing bitsandbytes (directly, or through peft) tries to fetch an
# optional hub kernel for its 4-bit GEMM and logs a warning when the `kernels` package is absent.
# Its own CPU kernel then runs instead, the one the study's numbers come from: nothing is wrong, so
# the warning is not shown to every job. Errors from that module still are.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
