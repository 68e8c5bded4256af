"""Numba kernels for the CPU. Importing this package registers every fast implementation; the
kernel registry does so on the first dispatch to a CPU array, so `import tinygrad_llm` stays cheap.

One file per fused family, named as in ops/: softmax (cross-entropy), norm, activation (GELU),
embedding, attention.
"""
from . import norm  # noqa: F401
from . import softmax  # noqa: F401
from . import activation  # noqa: F401
from . import embedding  # noqa: F401
from . import attention  # noqa: F401
