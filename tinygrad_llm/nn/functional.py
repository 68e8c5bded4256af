"""The functional API, with PyTorch's names: thin wrappers that validate arguments and apply ops.

Composites that are not hot (linear, masked_fill) stay compositions here and autograd derives
their gradients; hot ones (cross_entropy, the norms, gelu, relu2, attention) are single ops with
kernels.
"""
import numpy as np

from .. import backend
from ..ops import (AttentionOp, CrossEntropyOp, DropoutOp, EmbeddingOp, GeluOp, LayerNormOp,
                   LinearOp, LogSoftmaxOp, RMSNormOp, SoftmaxOp, WhereOp)
from ..ops.activation import Relu2Op
from ..ops.linear_attention import linear_attention
from ..ops.softmax import REDUCTIONS
from ..random import Generator
from ..tensor import Tensor, _lift

__all__ = ["relu", "relu2", "gelu", "silu", "sigmoid", "tanh", "softmax", "log_softmax",
           "cross_entropy", "layer_norm", "rms_norm", "embedding", "dropout",
           "scaled_dot_product_attention", "linear", "where", "masked_fill", "linear_attention"]


def _ids(ids, device, name, limit=None, ignore=None):
    """Integer ids as an array on `device` (accepts a Tensor, an array or a list). Ids in
    [0, limit) (or equal to `ignore`) are checked while they are on the host: on the way to the
    GPU here, and by the op itself on the CPU; ids already on the GPU are not read back."""
    a = ids.data if isinstance(ids, Tensor) else ids
    if not hasattr(a, "dtype"):
        a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer ids, got dtype {a.dtype}")
    if limit is not None and device != "cpu" and backend.device_of(a) == "cpu":
        _check_range(name, a, limit, ignore)
    return backend.to_device(a, device)


def _check_range(name, a, limit, ignore):
    bad = ((a < 0) | (a >= limit)) & (a != ignore)
    if bad.any():
        raise ValueError(f"{name} {int(a[bad].reshape(-1)[0])} is out of range [0, {limit})"
                         + ("" if ignore is None else f" (and is not ignore_index={ignore})"))


def _array(x, device):
    """A mask or condition (Tensor, array, list or None) as an array on `device`."""
    a = x.data if isinstance(x, Tensor) else x
    if a is None:
        return None
    return backend.to_device(a if hasattr(a, "dtype") else np.asarray(a), device)


def relu(x):
    return x.relu()


def relu2(x):
    """max(x, 0)^2, Primer's squared ReLU (So et al., 2021): one fused op (ops/activation.py,
    d/dx = 2 max(x, 0)) with Numba and CUDA kernels. x: any shape -> same shape and dtype."""
    return Relu2Op.apply(x)


def gelu(x, approximate="none"):
    """x * Phi(x); approximate="tanh" uses the tanh form (GPT-2's "gelu_new")."""
    return GeluOp.apply(x, approximate=approximate)


def silu(x):
    return x.silu()


def sigmoid(x):
    return x.sigmoid()


def tanh(x):
    return x.tanh()


def softmax(x, axis=-1):
    return SoftmaxOp.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    return LogSoftmaxOp.apply(x, axis=axis)


def cross_entropy(logits, targets, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Mean negative log-likelihood of `targets` under softmax(`logits`).

    logits: (..., V) float; targets: (...) int (any leading shape matching the logits').
    Rows whose target equals `ignore_index` are skipped (and not counted by "mean").
    reduction: "mean" | "sum" | "none" (then the loss has the targets' shape).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    v = logits.shape[-1]
    t = _ids(targets, logits.device, "cross_entropy: target", v, ignore_index)
    if t.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets of shape {t.shape} do not match logits of "
                         f"shape {logits.shape} (expected targets {logits.shape[:-1]})")
    if backend.device_of(t) == "cpu":
        _check_range("cross_entropy: target", t, v, ignore_index)
    loss = CrossEntropyOp.apply(logits.reshape(-1, v), t.reshape(-1), ignore_index=ignore_index,
                                reduction=reduction, label_smoothing=label_smoothing)
    return loss.reshape(t.shape) if reduction == "none" else loss


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """LayerNorm over the last axis; weight/bias: (C,) Tensors or None (no affine part)."""
    if weight is None:
        weight = Tensor._wrap(backend.xp_for(x.device).ones(x.shape[-1], dtype=x.dtype))
    return LayerNormOp.apply(x, weight, bias, eps=eps)


def rms_norm(x, weight=None, eps=1e-6):
    """RMSNorm over the last axis; weight: (C,) Tensor or None."""
    if weight is None:
        weight = Tensor._wrap(backend.xp_for(x.device).ones(x.shape[-1], dtype=x.dtype))
    return RMSNormOp.apply(x, weight, eps=eps)


def embedding(ids, weight):
    """Rows of `weight` (V, C) picked by integer `ids` (...) -> (..., C)."""
    return EmbeddingOp.apply(weight, _ids(ids, weight.device, "embedding: id", weight.shape[0]))


def dropout(x, p=0.5, training=True, seed=None):
    """Zero each element with probability p and scale the rest by 1/(1-p); identity when not
    training or p == 0. The mask comes from the device's Philox generator (seeded by
    tl.manual_seed, resumed from a checkpoint's two ints), or from a fresh one of `seed`: the same
    seed gives the same mask on the CPU and the GPU."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    gen = backend.generator(x.device) if seed is None else Generator(x.device, seed)
    return DropoutOp.apply(x, p=p, generator=gen)


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, window=None):
    """softmax(q k^T * scale + mask) v, per head.

    q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) with H a multiple of Hkv (GQA / MQA).
    attn_mask: bool (True = attend) or additive float, broadcastable to (B, H, Tq, Tk); a float
        Tensor that requires grad (a learned bias) receives its gradient.
    is_causal: query i sees keys j <= i + Tk - Tq. window: each query also sees only its `window`
        most recent keys (sliding-window attention). scale: defaults to 1/sqrt(D).
    """
    if window is not None and window < 1:
        raise ValueError(f"scaled_dot_product_attention: window must be >= 1 or None, got {window}")
    mask = attn_mask if isinstance(attn_mask, Tensor) and attn_mask.requires_grad else \
        _array(attn_mask, q.device)
    return AttentionOp.apply(q, k, v, mask, causal=bool(is_causal), scale=scale,
                             window=int(window or 0))


def linear(x, weight, bias=None):
    """x @ weight^T + bias, with weight (out_features, in_features) as in PyTorch; one op."""
    return LinearOp.apply(x, weight, bias) if bias is not None else LinearOp.apply(x, weight)


def where(cond, a, b):
    """Elementwise cond ? a : b; `a` or `b` may be numbers."""
    like = a if isinstance(a, Tensor) else b
    return WhereOp.apply(_array(cond, like.device), _lift(a, like), _lift(b, like))


def masked_fill(x, mask, value):
    return x.masked_fill(mask, value)
