"""The batch-1 decode step: a few new tokens through every layer, reading and appending the KV
cache, with no autograd, no Tensor and no per-op dispatch.

Decoding one sequence is a chain of matrix-vector products (each weight read once per token) and
a few vector operations between them. Through the model's forward that is a few dozen op calls
per layer, each one building Tensors, checking shapes and dispatching; for a small model the
arithmetic is a few microseconds and that bookkeeping is all the time. This module runs the same
math as one loop over the layers:

    x = tok_emb[id] (+ pos_table[pos])
    for each layer:
        h = norm1(x);  q, k, v = split(W_qkv h + b)          (H, Hkv, Hkv heads of D)
        q, k = rope(q, pos), rope(k, pos)                    (when the model uses RoPE)
        K[:, pos], V[:, pos] = k, v                          (append to the cache)
        o_h = softmax(q_h K_g^T / sqrt(D)) V_g               (g = h // (H / Hkv): GQA groups)
        x = x + W_proj o + b
        x = x + W_down act(W_up norm2(x) + b) + b            (SwiGLU: silu(W_gate h) * W_up h)
    logits = W_head norm(x)

`decode_step` below is that loop in NumPy: the readable reference, and what runs on the GPU.
kernels/cpu/decode.py is the same loop in one Numba call per step, with the large matrix-vector
products split over threads. Both read the model's own parameter arrays (nothing is copied) and
write K/V straight into the cache's storage: `make_caches` gives a batch-1 model caches that are
views of two stacked buffers (L, Hkv, T, D), which the DecodePlan holds.

`DecodePlan.reason(model)` says why a model cannot take this path (post-LN, sliding windows,
linear attention, KV sharing, mixtures of experts, ALiBi/T5 biases, float16); those decode through
the model's forward, which is always correct. `forward_logits` is the one entry point the decoders
call: the plan when it applies, the model's forward otherwise.
"""
import contextlib
import weakref

import numpy as np

from .. import backend
from ..kernels import kernel
from ..nn.layers import SwiGLU
from ..ops.activation import gelu_forward
from ..ops.norm import layer_norm_forward, rms_norm_forward
from ..nn.positions import LearnedPositions, SinusoidalPositions
from ..tensor import is_grad_enabled, no_grad

__all__ = ["DecodePlan", "DecodeWeights", "decode_step", "forward_logits", "inference",
           "MAX_STEP_TOKENS"]

MAX_STEP_TOKENS = 16      # longer feeds (a prompt) run through the model's batched forward
NORMS = {"layernorm": 0, "rmsnorm": 1}
ACTIVATIONS = {"gelu": 0, "gelu_tanh": 1, "relu": 2, "swiglu": 3}
POSITIONS = {"none": 0, "learned": 1, "sinusoidal": 1, "rope": 2}


def _data(p):
    return None if p is None else p.data


def _matrix(layer):
    """A projection's weight: the float array of a Linear/Embedding, or a quantized layer itself
    (quant/linear.py's QuantLinear / QuantEmbedding: it has `packed` and `dequantize()`)."""
    return layer if hasattr(layer, "packed") else layer.weight.data


def _identity(layer):
    """What says, by its identity, that the layer still holds what a plan read: a float weight
    array, or a quantized layer's PackedWeight key (new whenever its content is replaced)."""
    return layer.packed.key if hasattr(layer, "packed") else layer.weight.data


class _Layer:
    """One block's arrays: norms (w, b), the packed q/k/v projection, the output projection and
    the feed-forward (w_in = up, or gate for SwiGLU; w_up = SwiGLU's up). A projection is
    (weight, bias): weight as _matrix gives it, bias None when absent."""

    def __init__(self, block):
        attn, ffn = block.attn, block.ffn
        self.norm1 = (_data(block.norm1.weight), _data(getattr(block.norm1, "bias", None)))
        self.norm2 = (_data(block.norm2.weight), _data(getattr(block.norm2, "bias", None)))
        self.qkv = (_matrix(attn.qkv), _data(attn.qkv.bias))
        self.proj = (_matrix(attn.proj), _data(attn.proj.bias))
        gated = isinstance(ffn, SwiGLU)
        first = ffn.gate if gated else ffn.up
        self.ffn_in = (_matrix(first), _data(first.bias))
        self.ffn_up = (_matrix(ffn.up), _data(ffn.up.bias)) if gated else (None, None)
        self.down = (_matrix(ffn.down), _data(ffn.down.bias))
        self.identity = [_identity(m) for m in (attn.qkv, attn.proj, ffn.down)]


class DecodeWeights:
    """A GPT's arrays as decode_step reads them (the model's own arrays: nothing is copied).
    `DecodeWeights.of(model)` keeps one per model and rebuilds it when a parameter array was
    replaced (.to(device), quantize). Quantized layers appear as the layers themselves."""

    _cache = weakref.WeakKeyDictionary()

    def __init__(self, model):
        c = model.config
        self.n_layer, self.n_head, self.n_kv_head = c.n_layer, c.n_head, c.n_kv_head
        self.head_dim = c.head_dim
        self.norm_kind, self.eps = NORMS[c.norm], float(c.norm_eps)
        self.act_kind, self.pos_kind = ACTIVATIONS[c.mlp], POSITIONS[c.pos]
        self.dtype = _float_dtype(model)
        self.tok_emb = _matrix(model.tok_emb)
        self.pos_table = (model.pos_emb.weight.data if isinstance(model.pos_emb, LearnedPositions)
                          else model.pos_emb.table if isinstance(model.pos_emb, SinusoidalPositions)
                          else None)
        self.cos = model.rotary.cos if model.rotary is not None else None
        self.sin = model.rotary.sin if model.rotary is not None else None
        self.layers = [_Layer(b) for b in model.blocks]
        self.norm = (_data(model.norm.weight), _data(getattr(model.norm, "bias", None)))
        self.head = _matrix(model.head)
        self.identity = [_identity(model.tok_emb), _identity(model.head)]
        self.kernel_args = None          # the CPU kernel's packed argument lists, made once

    @classmethod
    def of(cls, model):
        weights = cls._cache.get(model)
        if weights is None or not weights.current(model):
            weights = cls._cache[model] = cls(model)
        return weights

    def current(self, model):
        """True while the model still holds the arrays read here."""
        if any(a is not b for a, b in zip(self.identity, (_identity(model.tok_emb),
                                                           _identity(model.head)))):
            return False
        return all(all(a is b for a, b in zip(layer.identity, (_identity(block.attn.qkv),
                                                               _identity(block.attn.proj),
                                                               _identity(block.ffn.down))))
                   and block.norm1.weight.data is layer.norm1[0]
                   for layer, block in zip(self.layers, model.blocks))


def _float_dtype(model):
    """The model's float dtype: its norms' (quantized layers keep no float weight)."""
    return model.blocks[0].norm1.weight.dtype if len(model.blocks) else \
        next(iter(model.parameters())).dtype


class DecodePlan:
    """What decode_step runs on: a model's DecodeWeights and the K/V storage of one batch-1
    sequence, k_all and v_all (n_layer, Hkv, max_len, D); layer i's cache is a view of k_all[i].
    Build it after checking DecodePlan.reason(model) is None."""

    def __init__(self, model, max_len):
        self.weights = DecodeWeights.of(model)
        w = self.weights
        self.max_len = int(max_len)
        self.device = model.device
        xp = backend.xp_for(self.device)
        shape = (w.n_layer, w.n_kv_head, self.max_len, w.head_dim)
        self.k_all = xp.zeros(shape, w.dtype)
        self.v_all = xp.zeros(shape, w.dtype)

    @staticmethod
    def reason(model):
        """None when decode_step can run `model`; otherwise why not (a short phrase)."""
        c = getattr(model, "config", None)
        if c is None or not hasattr(c, "kv_share") or not hasattr(model, "blocks"):
            return "not a GPT"
        checks = (
            (not c.prenorm, "post-LN blocks"),
            (c.attention != "softmax", f"{c.attention} attention"),
            (c.window is not None, "sliding-window attention"),
            (c.kv_share != 1, "cross-layer KV sharing"),
            (c.n_expert > 0, "a mixture of experts"),
            (c.pos not in POSITIONS, f"{c.pos} position biases"),
            (c.norm not in NORMS, f"{c.norm} norms"),
            (c.mlp not in ACTIVATIONS, f"{c.mlp} feed-forward"),
            (_float_dtype(model) not in (np.float32, np.float64),
             f"{_float_dtype(model)} weights"))
        for failed, why in checks:
            if failed:
                return why
        return None

    def ready(self, model, caches, offset):
        """True when a step can run: no autograd, eval mode, `caches` still this plan's views and
        all holding `offset` tokens, and the model still on the arrays the plan read (.to()
        replaces them; load_state_dict and the optimizers write in place)."""
        k_all = self.k_all
        return (not model.training and not is_grad_enabled()
                and _identity(model.tok_emb) is self.weights.identity[0]
                and all(c.length == offset and c.k.base is k_all for c in caches))


# ---- the reference step ---------------------------------------------------------------------
def _norm(x, w, b, kind, eps):
    """The model's LayerNorm (kind 0) or RMSNorm (kind 1) of one vector (ops/norm.py's)."""
    if kind == 1:
        return rms_norm_forward(x[None], w, eps)[0][0]
    return layer_norm_forward(x[None], w, b, eps)[0][0]


def _linear(x, w_b):
    w, b = w_b
    y = (w if hasattr(w, "shape") else w.dequantize()) @ x       # a quantized layer: decoded
    return y if b is None else y + b


def _activation(u, kind):
    """GELU (erf), GELU (tanh), ReLU, or SiLU (SwiGLU's gate) of a vector."""
    xp = backend.array_module(u)
    if kind in (0, 1):
        return gelu_forward(u, "tanh" if kind == 1 else "none")           # ops/activation.py's
    if kind == 2:
        return xp.maximum(u, 0)
    return u / (1 + xp.exp(-u))


def _rope(x, cos, sin):
    """x: (heads, D) rotated by one position's tables (D,): pairs (i, i + D/2)."""
    half = x.shape[-1] // 2
    rotated = backend.array_module(x).concatenate([-x[:, half:], x[:, :half]], axis=1)
    return x * cos + rotated * sin


@kernel("decode_step")        # fast version: kernels/cpu/decode.py
def decode_step(ids, start, plan):
    """ids: (t,) int64 tokens at positions start .. start + t - 1, after `start` cached ones.
    Appends their K/V to the plan's storage; returns (t, V) logits in the weights' dtype."""
    w = plan.weights
    xp = backend.xp_for(plan.device)
    H, Hkv, D = w.n_head, w.n_kv_head, w.head_dim
    group = H // Hkv
    out = []
    for i, token in enumerate(backend.to_numpy(ids).tolist()):
        pos = start + i
        x = (w.tok_emb[token] if hasattr(w.tok_emb, "shape")
             else w.tok_emb(np.array([token])).data[0])          # a quantized table's row
        if w.pos_kind == 1:
            x = x + w.pos_table[pos]
        for layer, K, V in zip(w.layers, plan.k_all, plan.v_all):
            h = _norm(x, *layer.norm1, w.norm_kind, w.eps)
            qkv = _linear(h, layer.qkv).reshape(H + 2 * Hkv, D)
            q, k, v = qkv[:H], qkv[H:H + Hkv], qkv[H + Hkv:]
            if w.pos_kind == 2:
                q, k = _rope(q, w.cos[pos], w.sin[pos]), _rope(k, w.cos[pos], w.sin[pos])
            K[:, pos], V[:, pos] = k, v
            keys = K[:, :pos + 1].repeat(group, axis=0)                 # (H, n, D)
            values = V[:, :pos + 1].repeat(group, axis=0)
            scores = (keys @ q[:, :, None])[:, :, 0] / np.sqrt(D)       # (H, n)
            p = xp.exp(scores - scores.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            o = (p[:, None, :] @ values)[:, 0]                         # (H, D)
            x = x + _linear(o.reshape(-1), layer.proj)
            h = _norm(x, *layer.norm2, w.norm_kind, w.eps)
            u = _activation(_linear(h, layer.ffn_in), w.act_kind)
            if layer.ffn_up[0] is not None:
                u = u * _linear(h, layer.ffn_up)
            x = x + _linear(u, layer.down)
        out.append(_linear(_norm(x, *w.norm, w.norm_kind, w.eps), (w.head, None)))
    return xp.stack(out).astype(w.dtype)


# ---- the decoders' entry point ---------------------------------------------------------------
def forward_logits(model, ids, caches, offset):
    """Logits (t, V) of a batch-1 feed of ids (t,) at positions offset.., appending to `caches`:
    the fused step when the caches carry a DecodePlan that is ready, the model's forward
    otherwise."""
    plan = getattr(caches, "plan", None)
    t = len(ids)
    if plan is not None and t <= MAX_STEP_TOKENS and plan.ready(model, caches, offset):
        ids = np.asarray(ids, dtype=np.int64)
        logits = decode_step(ids if plan.device == "cpu" else backend.to_device(ids, plan.device),
                             offset, plan)
        for c in caches:
            c.length += t
        return logits
    x = backend.to_device(np.asarray(ids, dtype=np.int64)[None], model.device)
    return model(x, caches=caches, offset=offset).data[0]


@contextlib.contextmanager
def inference(model):
    """no_grad, with the model in eval mode (switched only when it was training: walking the
    modules costs more than a small model's whole step)."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with no_grad():
            yield
    finally:
        if was_training:
            model.train(True)
