"""Neural-network building blocks: Module and Parameter (module.py), the basic layers
(layers.py), position schemes (positions.py), attention (attention.py), mixture of experts
(moe.py), and the PyTorch-named functional API (functional.py)."""
from . import functional
from .layers import MLP, Dropout, Embedding, LayerNorm, Linear, RMSNorm, SwiGLU
from .module import Module, ModuleDict, ModuleList, Parameter, Sequential

__all__ = ["functional", "Module", "Parameter", "ModuleList", "ModuleDict", "Sequential",
           "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "MLP", "SwiGLU"]
