"""Neural-network building blocks. The functional API is `tinygrad_llm.nn.functional`; modules
(Module, Linear, ...) arrive with the layers issue."""
from . import functional

__all__ = ["functional"]
