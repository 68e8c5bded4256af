"""The basic layers: Linear, Embedding, LayerNorm, RMSNorm, Dropout, and the two feed-forward
blocks of a transformer, MLP (GPT-2) and SwiGLU (Llama).

Weights are drawn on the CPU from the library's seeded generator and then moved, so a model built
with the same seed has the same weights on every device. Initialisation follows PyTorch's
defaults here (uniform +-1/sqrt(fan_in) for Linear, N(0, 1) for Embedding); models override it
(GPT-2's N(0, 0.02)).
"""
import numpy as np

from .. import amp, backend
from ..ops.activation import SwigluOp
from . import functional as F
from .module import Module, Parameter

__all__ = ["Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "MLP", "SwiGLU",
           "ACTIVATIONS", "init_parameter"]


def init_parameter(shape, device=None, dtype=np.float32, std=None, bound=None, value=None):
    """A Parameter of `shape`: N(0, std^2), U(-bound, bound) or filled with `value`."""
    if value is not None:
        data = np.full(shape, value, dtype=dtype)
    elif std is not None:
        data = backend.rng("cpu").standard_normal(shape) * std
    else:
        data = backend.rng("cpu").uniform(-bound, bound, shape)
    return Parameter(np.asarray(data, dtype=dtype), device=device)


class Linear(Module):
    """y = x W^T + b, with W (out_features, in_features) as in PyTorch: (..., in) -> (..., out).
    Inside tl.autocast the product runs in float16 / bfloat16 over the float32 weight (amp.py)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / np.sqrt(in_features)
        self.weight = init_parameter((out_features, in_features), device, dtype, bound=bound)
        self.bias = init_parameter((out_features,), device, dtype, bound=bound) if bias else None

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: input of shape {x.shape} has last dim {x.shape[-1]}, "
                             f"expected in_features={self.in_features}")
        if amp.autocast_dtype() is not None:        # the product in float16 (amp.py)
            return amp.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """Rows of a (num_embeddings, embedding_dim) table picked by integer ids: (...) -> (..., C)."""

    def __init__(self, num_embeddings, embedding_dim, device=None, dtype=np.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = init_parameter((num_embeddings, embedding_dim), device, dtype, std=1.0)

    def forward(self, ids):
        return F.embedding(ids, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (Ba et al., 2016)."""

    def __init__(self, dim, eps=1e-5, bias=True, device=None, dtype=np.float32):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = init_parameter((dim,), device, dtype, value=1.0)
        self.bias = init_parameter((dim,), device, dtype, value=0.0) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (Zhang & Sennrich, 2019)."""

    def __init__(self, dim, eps=1e-6, device=None, dtype=np.float32):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = init_parameter((dim,), device, dtype, value=1.0)

    def forward(self, x):
        return F.rms_norm(x, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"


class Dropout(Module):
    """Zeroes each element with probability p while training (scaling the rest by 1/(1-p))."""

    def __init__(self, p=0.0):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),   # GPT-2's "gelu_new"
    "relu": F.relu,
    "relu2": F.relu2,                                        # Primer (So et al., 2021)
    "silu": F.silu,
}


def _activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(Module):
    """The GPT-2 / original-Transformer feed-forward: down(act(up(x))). x: (..., C) -> (..., C)."""

    def __init__(self, dim, hidden, activation="gelu", bias=True, dropout=0.0, device=None,
                 dtype=np.float32):
        super().__init__()
        self.activation = activation
        self.act = _activation(activation)
        self.up = Linear(dim, hidden, bias, device, dtype)
        self.down = Linear(hidden, dim, bias, device, dtype)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.down(self.act(self.up(x))))

    def extra_repr(self):
        return f"activation={self.activation!r}"


class SwiGLU(Module):
    """Llama's gated feed-forward (Shazeer, 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, dim, hidden, bias=False, dropout=0.0, device=None, dtype=np.float32):
        super().__init__()
        self.gate = Linear(dim, hidden, bias, device, dtype)
        self.up = Linear(dim, hidden, bias, device, dtype)
        self.down = Linear(hidden, dim, bias, device, dtype)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.down(SwigluOp.apply(self.gate(x), self.up(x))))
