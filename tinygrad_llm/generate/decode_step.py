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

`decode_step` below is that loop as array code (NumPy or CuPy): the readable reference, and what
runs on the GPU, where its pieces dispatch to the CUDA kernels (norms, RoPE, GELU/SwiGLU,
quant_matmul for quantized layers, and decode_attention, kernels/cuda/decode.py: the attention
over the cache in one launch). On a GPU a step stays there: the ids are gathered on the device,
every array keeps the model's dtype, nothing is read back; the one read per token is the sampled
id, in generate(). kernels/cpu/decode.py is the same loop in one Numba call per step, with the
large matrix-vector products split over threads. Both read the model's own parameter arrays
(nothing is copied) and write K/V straight into the cache's storage: `make_caches` gives a
batch-1 model caches that are views of two stacked buffers (L, Hkv, T, D), which the DecodePlan
holds.

`DecodePlan.reason(model)` says why a model cannot take this path (post-LN, sliding windows,
linear attention, KV sharing, mixtures of experts, ALiBi/T5 biases, float16); those decode through
the model's forward, which is always correct. `forward_logits` is the one entry point the decoders
call: the plan when it applies, the model's forward otherwise.
"""
import contextlib
import math
import weakref

import numpy as np

from .. import backend
from ..kernels import kernel
from ..nn.layers import SwiGLU
from ..nn.positions import LearnedPositions, SinusoidalPositions
from ..ops.activation import gelu_forward, swiglu_forward
from ..ops.norm import layer_norm_forward, rms_norm_forward
from ..ops.rope import rope_forward
from ..quant.linear import quant_matmul
from ..tensor import array_of, is_grad_enabled, no_grad

__all__ = ["DecodePlan", "DecodeWeights", "decode_step", "decode_attention", "forward_logits",
           "inference", "MAX_STEP_TOKENS"]

MAX_STEP_TOKENS = 16      # longer feeds (a prompt) run through the model's batched forward
NORMS = ("layernorm", "rmsnorm")                   # the config's choices the step can run
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu")
POSITIONS = ("none", "learned", "sinusoidal", "rope")


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
        self.norm_kind, self.eps = c.norm, float(c.norm_eps)      # one of NORMS
        self.mlp = c.mlp                                           # one of ACTIVATIONS
        self.dtype = _float_dtype(model)
        self.tok_emb = _matrix(model.tok_emb)
        # positions: a (T, C) table added to x (learned, sinusoidal), or RoPE's cos, sin (T, D)
        self.pos_table = (model.pos_emb.weight.data if isinstance(model.pos_emb, LearnedPositions)
                          else model.pos_emb.table if isinstance(model.pos_emb, SinusoidalPositions)
                          else None)
        self.cos = model.rotary.cos if model.rotary is not None else None
        self.sin = model.rotary.sin if model.rotary is not None else None
        self.layers = [_Layer(b) for b in model.blocks]
        self.norm = (_data(model.norm.weight), _data(getattr(model.norm, "bias", None)))
        self.head = _matrix(model.head)
        self.identity = [_identity(model.tok_emb), _identity(model.head)]
        self.kernel_args = None          # the CPU kernel's _Arguments (kernels/cpu/decode.py)

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
        if model.rotary is not None and model.rotary.cos is not self.cos:
            return False                         # GPT.set_rope_scaling rebuilt the tables
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
        # each layer's (1, Hkv, max_len, D) views, the storage make_caches gives its KVCaches:
        # `ready` knows them by identity (a CuPy view's .base need not be k_all itself)
        self.storage = [(k[None], v[None]) for k, v in zip(self.k_all, self.v_all)]

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
            (c.mlp == "none", "attention-only blocks (mlp='none')"),
            (c.mlp not in ACTIVATIONS, f"{c.mlp} feed-forward"),
            (c.qk_norm, "QK-norm"),
            (c.logit_softcap is not None, "logit soft-capping"),
            (c.unet_skips, "U-net skips"),
            (c.value_embeds, "value embeddings"),
            (_float_dtype(model) not in (np.float32, np.float64),
             f"{_float_dtype(model)} weights"))
        for failed, why in checks:
            if failed:
                return why
        return None

    def ready(self, model, caches, offset):
        """True when a step can run: no autograd, eval mode, `caches` this plan's own views (the
        same objects, one per layer) all holding `offset` tokens, and the model's token embedding
        still the one the plan read. That one identity stands for the whole model: .to() replaces
        every array, and load_state_dict and the optimizers write in place, which the plan sees.
        A projection replaced alone after the plan was made (quantize without the embeddings) is
        not noticed here; the next plan (make_caches) reads the model afresh."""
        return (not model.training and not is_grad_enabled()
                and _identity(model.tok_emb) is self.weights.identity[0]
                and len(caches) == len(self.storage)
                and all(c.length == offset and c.k is k and c.v is v
                        for c, (k, v) in zip(caches, self.storage)))


# ---- the reference step ---------------------------------------------------------------------
# Every array below is in the model's dtype and on its device: the scale is a scalar of that dtype
# (a NumPy float64 scalar would turn a float32 step into float64), and the ids stay on the device
# (the token rows are gathered there), so a step on a GPU never waits for the host. The t tokens
# of a step travel together, as (t, C) rows: one matrix product per projection reads each weight
# once per step, not once per token.
def _norm(x, w_b, weights):
    """The model's LayerNorm or RMSNorm of rows x (t, C) (ops/norm.py's, a kernel on a GPU)."""
    w, b = w_b
    if weights.norm_kind == "rmsnorm":
        return rms_norm_forward(x, w, weights.eps)[0]
    return layer_norm_forward(x, w, b, weights.eps)[0]


def _linear(x, w_b):
    """x: (t, in) -> x W^T + b (t, out). W is a float (out, in) array (one GEMM) or a quantized
    layer, whose PackedWeight quant_matmul multiplies without decoding the whole matrix."""
    w, b = w_b
    y = x @ w.T if hasattr(w, "shape") else quant_matmul(x, w.packed)
    return y if b is None else y + b


def _embed(table, ids):
    """Token rows (t, C) for ids (t,) on the table's device: a gather, or a quantized table's
    rows decoded (QuantEmbedding)."""
    return table[ids] if hasattr(table, "shape") else array_of(table(ids))


def _feed_forward(h, layer, mlp):
    """W_down act(W_in h + b) + b for rows h (t, C); SwiGLU: silu(W_gate h) * (W_up h)."""
    u = _linear(h, layer.ffn_in)
    if mlp == "swiglu":
        u = swiglu_forward(u, _linear(h, layer.ffn_up))                  # ops/activation.py's
    elif mlp == "relu":
        u = backend.array_module(u).maximum(u, 0)
    else:
        u = gelu_forward(u, "tanh" if mlp == "gelu_tanh" else "none")
    return _linear(u, layer.down)


@kernel("decode_attention")   # fast version: kernels/cuda/decode.py
def decode_attention(q, keys, values, start, scale):
    """Attention of a step's queries over the cache.

    q: (H, t, D), the queries of positions start .. start + t - 1; keys, values: (Hkv, n, D),
    the cache through the step's own tokens (n = start + t). Query i sees keys 0 .. start + i;
    query head h reads K/V head h // G, G = H / Hkv (grouped by a reshape, never repeated).
    Returns o (H, t, D) = softmax(q K^T * scale) V, in q's dtype."""
    xp = backend.array_module(q)
    h, t, d = q.shape
    hkv, n = keys.shape[:2]
    g = h // hkv
    qg = q.reshape(hkv, g * t, d) * q.dtype.type(scale)          # (Hkv, G t, D): rows (h, i)
    s = qg @ keys.transpose(0, 2, 1)                               # (Hkv, G t, n)
    if t > 1:                                  # a step's later tokens are hidden from earlier
        future = xp.arange(n) > xp.arange(start, start + t)[:, None]            # (t, n)
        s = xp.where(future, q.dtype.type(-np.inf), s.reshape(hkv, g, t, n))
        s = s.reshape(hkv, g * t, n)
    p = xp.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return (p @ values).reshape(h, t, d)


@kernel("decode_step")        # fast version: kernels/cpu/decode.py
def decode_step(ids, start, plan):
    """ids: (t,) int64 tokens at positions start .. start + t - 1, after `start` cached ones, on
    the plan's device. Appends their K/V to the plan's storage; returns (t, V) logits in the
    weights' dtype."""
    w = plan.weights
    H, Hkv, D = w.n_head, w.n_kv_head, w.head_dim
    t = ids.shape[0]
    stop = start + t
    scale = 1.0 / math.sqrt(D)
    x = _embed(w.tok_emb, ids)                                           # (t, C)
    if w.pos_table is not None:
        x = x + w.pos_table[start:stop]
    for layer, K, V in zip(w.layers, plan.k_all, plan.v_all):             # K, V: (Hkv, T, D)
        h = _norm(x, layer.norm1, w)
        qkv = _linear(h, layer.qkv).reshape(t, H + 2 * Hkv, D).transpose(1, 0, 2)   # (S, t, D)
        qk, v = qkv[:H + Hkv], qkv[H + Hkv:]
        if w.cos is not None:                  # RoPE: one pass over the query and key heads
            qk = rope_forward(qk, w.cos[start:stop], w.sin[start:stop])
        K[:, start:stop], V[:, start:stop] = qk[H:], v                  # append to the cache
        o = decode_attention(qk[:H], K[:, :stop], V[:, :stop], start, scale)    # (H, t, D)
        x = x + _linear(o.transpose(1, 0, 2).reshape(t, H * D), layer.proj)
        x = x + _feed_forward(_norm(x, layer.norm2, w), layer, w.mlp)
    return _linear(_norm(x, w.norm, w), (w.head, None))


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
