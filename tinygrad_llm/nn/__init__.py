"""Neural-network building blocks: Module and Parameter (module.py), the basic layers
(layers.py), position schemes (positions.py), attention (attention.py; linear attention in
linear_attention.py; Transformer-XL's attention over a memory in relative_attention.py), the
transformer block (block.py), mixture of experts (moe.py), and the PyTorch-named functional API
(functional.py)."""
from . import functional
from .attention import MultiHeadAttention
from .block import TransformerBlock
from .layers import MLP, Dropout, Embedding, LayerNorm, Linear, RMSNorm, SwiGLU
from .linear_attention import LinearAttention
from .module import Module, ModuleDict, ModuleList, Parameter, Sequential
from .moe import MoE
from .positions import (ALiBi, LearnedPositions, RotaryEmbedding, SinusoidalPositions,
                        T5RelativeBias, alibi_slopes)
from .relative_attention import RelativeMultiHeadAttention

__all__ = ["functional", "Module", "Parameter", "ModuleList", "ModuleDict", "Sequential",
           "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "MLP", "SwiGLU",
           "MultiHeadAttention", "LinearAttention", "RelativeMultiHeadAttention",
           "TransformerBlock", "MoE", "RotaryEmbedding",
           "LearnedPositions", "SinusoidalPositions", "ALiBi", "T5RelativeBias", "alibi_slopes"]
