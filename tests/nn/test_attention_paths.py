"""Which path MultiHeadAttention takes and what each returns, and LinearAttention as its own layer
(nn/linear_attention.py): the packed-path predicate case by case, one result shape from both
paths, K/V sharing between linear layers with grouped heads (K/V handed on at Hkv heads, against
the formula), and the names the package exports.

Oracles: the split path (tests/nn/test_layers.py compares it with a per-head NumPy loop) and
F.linear_attention over K/V heads repeated with np.repeat.
"""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import nn
from tinygrad_llm.nn.attention import ATTENTION_KINDS, MultiHeadAttention
from tinygrad_llm.nn.linear_attention import LinearAttention

# x: (B, T, C) = (2, 4, 8); H = 4 query heads over Hkv = 2 K/V heads of D = 2
B, T, C, H, HKV = 2, 4, 8, 4, 2
D = C // H


def _x(seed=0, requires_grad=False, device="cpu"):
    rng = np.random.default_rng(seed)
    return tl.Tensor(rng.standard_normal((B, T, C)), requires_grad=requires_grad, device=device)


class _Cache:
    """A KV cache that stores nothing: update hands back this step's K/V."""

    def update(self, k, v):
        return k, v


def _layer(cls=MultiHeadAttention, seed=1, **kwargs):
    tl.manual_seed(seed)
    return cls(C, H, HKV, **kwargs).to(dtype=np.float64)


# ---- the packed-path predicate --------------------------------------------------------------
PREDICATE_CASES = [
    # id, layer built with, set on the layer, forward arguments, packed?
    ("plain", {}, {}, {}, True),
    ("bidirectional_window", dict(causal=False, window=2), {}, {}, True),
    ("bias", {}, {}, dict(bias=np.zeros((1, H, T, T))), False),
    ("padding_mask", {}, {}, dict(padding_mask=np.ones((B, T), bool)), False),
    ("cache", {}, {}, dict(cache=_Cache()), False),
    ("provides_kv", {}, dict(provides_kv=True), {}, False),
]


@pytest.mark.parametrize("name, init, attrs, call, packed", PREDICATE_CASES,
                         ids=[c[0] for c in PREDICATE_CASES])
def test_packed_path_predicate_and_one_result_shape(name, init, attrs, call, packed):
    attn = _layer(**init)
    for key, value in attrs.items():
        setattr(attn, key, value)
    assert attn._packed_path_applies(call.get("bias"), call.get("padding_mask"),
                                     call.get("cache")) == packed
    y, kv = attn(_x(), **call)
    assert y.shape == (B, T, C)
    assert (kv is None) == packed          # the packed path never splits K/V
    if kv is not None:
        assert kv[0].shape == kv[1].shape == (B, HKV, T, D)


def test_a_sharing_layer_and_linear_attention_never_take_the_packed_path():
    assert not _layer(shares_kv=True)._packed_path_applies(None, None, None)
    assert not _layer(LinearAttention)._packed_path_applies(None, None, None)


# ---- LinearAttention ------------------------------------------------------------------------
def test_linear_attention_is_exported_and_named_by_its_kind():
    assert nn.LinearAttention is LinearAttention
    assert issubclass(LinearAttention, MultiHeadAttention)
    assert (MultiHeadAttention.kind, LinearAttention.kind) == ATTENTION_KINDS
    assert "kind='linear'" in repr(LinearAttention(C, H))


def _shared_pair(device="cpu"):
    first = _layer(LinearAttention).to(device)
    first.provides_kv = True
    second = _layer(LinearAttention, seed=2, shares_kv=True).to(device)
    return first, second


def test_linear_attention_shares_grouped_kv_at_hkv_heads():
    first, second = _shared_pair()
    x, h = _x(), _x(seed=5)
    _, (k, v) = first(x)
    assert k.shape == v.shape == (B, HKV, T, D)          # not expanded to H heads
    y = second(h, shared_kv=(k, v))[0].numpy()
    # the formula: q from second.q, K/V head j serving query heads j G .. j G + G - 1
    q = (h.numpy() @ second.q.weight.numpy().T + second.q.bias.numpy())
    q = q.reshape(B, T, H, D).transpose(0, 2, 1, 3)
    k_rep, v_rep = (np.repeat(a.numpy(), H // HKV, axis=1) for a in (k, v))
    o = nn.functional.linear_attention(tl.Tensor(q), tl.Tensor(k_rep), tl.Tensor(v_rep))
    want = o.numpy().transpose(0, 2, 1, 3).reshape(B, T, C) @ second.proj.weight.numpy().T
    np.testing.assert_allclose(y, want + second.proj.bias.numpy(), rtol=1e-10, atol=1e-12)


def test_linear_attention_shared_grouped_kv_gradcheck(device, impl):
    first, second = _shared_pair(device)
    params = list(first.parameters()) + list(second.parameters())
    rng = np.random.default_rng(3)
    for p in params:      # off the init, so no zero bias hides a gradient
        p.data = p.data + tl.backend.to_device(rng.standard_normal(p.shape) * 0.3, device)

    def run(x, *_):
        h, kv = first(x)
        return second(h, shared_kv=kv)[0]

    x = _x(requires_grad=True, device=device)
    assert tl.gradcheck(run, x, *params)
