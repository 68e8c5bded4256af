"""The layers of nn/layers.py, nn/attention.py, nn/linear_attention.py and nn/block.py: float64
gradchecks through the input and every parameter, attention against a per-head NumPy oracle, GQA
against MHA with repeated K/V rows, which inputs each output may depend on (causal, padding,
sliding window), and bad arguments.

Gradchecks: the module is cast with `.to(dtype=np.float64)` and its parameters are passed to
`tl.gradcheck` as inputs after x; the checked function ignores them and calls the module, whose
parameters gradcheck perturbs in place. Parameters get a random offset first, so norm weights of
exactly one and zero biases cannot hide a gradient. Every case runs on each device and with the
reference and the fast implementation (fixtures in tests/conftest.py).

MultiHeadAttention has two paths: the packed one (PackedAttentionOp on the (B, T, H + 2 Hkv, D)
projection, taken when `_packed_path_applies`: no bias, padding mask, cache or K/V sharing) and
the general one (q, k, v split, then scaled_dot_product_attention), forced with
`provides_kv = True`. Attention
gradchecks and oracle comparisons run both (`path` = "packed" / "split").

The attention oracle (`attention_oracle`) loops over batch and query heads in NumPy from the
layer's weights: query head h reads K/V head h // (H / Hkv), the mask is built from explicit
index comparisons (a query that sees no key outputs 0, as ops/attention.py documents), and RoPE is
applied with the half-split rotation from the layer's tables.
"""
import math

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import nn
from tinygrad_llm.nn.attention import MultiHeadAttention
from tinygrad_llm.nn.block import TransformerBlock
from tinygrad_llm.nn.layers import ACTIVATIONS, MLP, Embedding, LayerNorm, Linear, RMSNorm, SwiGLU
from tinygrad_llm.nn.linear_attention import LinearAttention
from tinygrad_llm.nn.positions import ALiBi, RotaryEmbedding, T5RelativeBias


# ---- helpers -------------------------------------------------------------------------------
def _x(*shape, seed=0, device="cpu", requires_grad=True):
    rng = np.random.default_rng(seed)
    return tl.Tensor(rng.standard_normal(shape), requires_grad=requires_grad, device=device)


def _float64(module, device="cpu", seed=1, jitter=0.3):
    """The module in float64 on `device`, each parameter offset by N(0, jitter^2)."""
    module.to(device, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        noise = rng.standard_normal(p.shape) * jitter
        p.data = p.data + tl.backend.to_device(noise, device)
    return module


def _check(fn, x, *modules, directions=None):
    """gradcheck fn(x) w.r.t. x (when it is a Tensor) and every parameter of `modules`."""
    params = [p for m in modules for p in m.parameters()]
    inputs = ([x] if isinstance(x, tl.Tensor) else []) + params
    if isinstance(x, tl.Tensor):
        run = lambda x_, *_: fn(x_)                      # noqa: E731
    else:
        run = lambda *_: fn(x)                           # noqa: E731
    assert tl.gradcheck(run, *inputs, directions=directions)


# x: (B, T, C) = (2, 4, 8) for attention; padding: batch row 1 has one left-padded position
B, T, C = 2, 4, 8
PAD = np.array([[True, True, True, True], [False, True, True, True]])
RIGHT_PAD = np.array([[True, True, True, False], [True, True, False, False]])


# ---- basic layers --------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck(device, impl, bias):
    lin = _float64(Linear(4, 3, bias=bias), device)
    assert (lin.bias is None) == (not bias)
    _check(lambda x: lin(x), _x(2, 3, 4, device=device), lin)


def test_linear_matches_formula():
    lin = Linear(4, 3)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    want = x @ lin.weight.numpy().T + lin.bias.numpy()
    np.testing.assert_allclose(lin(tl.Tensor(x)).numpy(), want, rtol=1e-5, atol=1e-6)
    assert lin.weight.shape == (3, 4)
    bound = 1 / math.sqrt(4)
    assert np.abs(lin.weight.numpy()).max() <= bound


def test_embedding_gradcheck(device, impl):
    emb = _float64(Embedding(6, 3), device)
    ids = np.array([[0, 2, 2, 5], [4, 0, 1, 2]])                 # repeats: scatter-add
    _check(lambda ids_: emb(ids_), ids, emb)


@pytest.mark.parametrize("make", [lambda: LayerNorm(5), lambda: LayerNorm(5, bias=False),
                                  lambda: RMSNorm(5)], ids=["layernorm", "layernorm_nobias",
                                                            "rmsnorm"])
def test_norm_gradcheck(device, impl, make):
    norm = _float64(make(), device)
    _check(lambda x: norm(x), _x(2, 3, 5, device=device), norm)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_gradcheck(device, impl, activation):
    mlp = _float64(MLP(4, 6, activation), device)
    _check(lambda x: mlp(x), _x(2, 3, 4, device=device), mlp)


def test_swiglu_gradcheck(device, impl):
    ffn = _float64(SwiGLU(4, 6, bias=True), device)
    _check(lambda x: ffn(x), _x(2, 3, 4, device=device), ffn)


def test_swiglu_matches_formula():
    ffn = SwiGLU(4, 6)
    x = np.random.default_rng(0).standard_normal((3, 4))
    ffn.to(dtype=np.float64)
    g = x @ ffn.gate.weight.numpy().T
    u = x @ ffn.up.weight.numpy().T
    want = (g / (1 + np.exp(-g)) * u) @ ffn.down.weight.numpy().T
    np.testing.assert_allclose(ffn(tl.Tensor(x)).numpy(), want, rtol=1e-10, atol=1e-12)


def test_unknown_activation_and_bad_dropout():
    with pytest.raises(ValueError, match="swish"):
        MLP(4, 6, "swish")
    with pytest.raises(ValueError, match="1.5"):
        nn.Dropout(1.5)


def test_linear_wrong_input_width():
    with pytest.raises(ValueError, match="in_features=4"):
        Linear(4, 3)(tl.Tensor(np.zeros((2, 5), np.float32)))


# ---- attention: the oracle -----------------------------------------------------------------
def _rope_np(x, cos, sin):
    """Half-split rotation (Su et al., 2021): x * cos + [-x2, x1] * sin.  x: (T, D)."""
    half = x.shape[-1] // 2
    return x * cos + np.concatenate((-x[:, half:], x[:, :half]), axis=-1) * sin


def attention_oracle(layer, x, bias=None, padding_mask=None):
    """y (B, T, C) of a softmax MultiHeadAttention, one (batch, query head) at a time."""
    Bx, Tx, _ = x.shape
    H, Hkv, D = layer.n_head, layer.n_kv_head, layer.head_dim
    G = H // Hkv
    qkv = x @ layer.qkv.weight.numpy().T
    if layer.qkv.bias is not None:
        qkv = qkv + layer.qkv.bias.numpy()
    qkv = qkv.reshape(Bx, Tx, H + 2 * Hkv, D)
    i, j = np.arange(Tx)[:, None], np.arange(Tx)[None, :]
    allowed = np.ones((Tx, Tx), bool)
    if layer.causal:
        allowed &= j <= i
    if layer.window is not None:
        allowed &= j > i - layer.window
    out = np.zeros((Bx, Tx, H, D))
    for b in range(Bx):
        for h in range(H):
            q, k, v = qkv[b, :, h], qkv[b, :, H + h // G], qkv[b, :, H + Hkv + h // G]
            if layer.rotary is not None:
                cos, sin = layer.rotary.cos[:Tx], layer.rotary.sin[:Tx]
                q, k = _rope_np(q, cos, sin), _rope_np(k, cos, sin)
            s = q @ k.T / math.sqrt(D)
            if bias is not None:
                s = s + bias[min(b, bias.shape[0] - 1), h]
            ok = allowed & (padding_mask[b][None, :] if padding_mask is not None else True)
            ok = np.broadcast_to(ok, s.shape)
            for r in range(Tx):                 # a query with no visible key outputs 0
                if ok[r].any():
                    e = np.exp(s[r, ok[r]] - s[r, ok[r]].max())
                    out[b, r, h] = (e / e.sum()) @ v[ok[r]]
    y = out.reshape(Bx, Tx, H * D) @ layer.proj.weight.numpy().T
    return y + layer.proj.bias.numpy() if layer.proj.bias is not None else y


# (name, constructor kwargs, forward kwargs): dim C=8, H=4 query heads
ATTENTION_CASES = [
    ("mha_causal", dict(n_head=4), {}),
    ("mha_bidirectional", dict(n_head=4, causal=False), {}),
    ("gqa_4_2_causal", dict(n_head=4, n_kv_head=2), {}),
    ("gqa_4_2_bidirectional", dict(n_head=4, n_kv_head=2, causal=False), {}),
    ("mqa_4_1_causal", dict(n_head=4, n_kv_head=1), {}),
    ("mqa_4_1_bidirectional", dict(n_head=4, n_kv_head=1, causal=False), {}),
    ("no_bias", dict(n_head=4, n_kv_head=2, bias=False), {}),
    ("padding_bidirectional", dict(n_head=4, n_kv_head=2, causal=False),
     dict(padding_mask=RIGHT_PAD)),
    ("padding_causal_left", dict(n_head=4, n_kv_head=2), dict(padding_mask=PAD)),
    ("window_2", dict(n_head=4, n_kv_head=2, window=2), {}),
    ("window_2_mqa", dict(n_head=4, n_kv_head=1, window=2), {}),
    ("rope", dict(n_head=4, n_kv_head=2, rotary="rope"), {}),
    ("rope_bidirectional", dict(n_head=4, causal=False, rotary="rope"), {}),
    ("alibi", dict(n_head=4, n_kv_head=2), dict(bias="alibi")),
]


def _make_attention(kwargs, device="cpu", path="packed"):
    kwargs = dict(kwargs)
    if kwargs.get("rotary") == "rope":
        kwargs["rotary"] = RotaryEmbedding(C // kwargs["n_head"], 16, device=device)
    attn = MultiHeadAttention(C, **kwargs)
    attn.provides_kv = path == "split"          # returning K/V forces the split path
    return attn


def _forward_kwargs(kwargs, device="cpu"):
    kwargs = dict(kwargs)
    if kwargs.get("bias") == "alibi":
        kwargs["bias"] = ALiBi(4)(T, T, device, np.float64)
    return kwargs


@pytest.mark.parametrize("path", ["packed", "split"])
@pytest.mark.parametrize("name, init, call", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_attention_gradcheck(device, impl, name, init, call, path):
    attn = _float64(_make_attention(init, device, path), device)
    fwd = _forward_kwargs(call, device)
    _check(lambda x: attn(x, **fwd)[0], _x(B, T, C, device=device), attn)


@pytest.mark.parametrize("path", ["packed", "split"])
@pytest.mark.parametrize("name, init, call", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_attention_matches_oracle(impl, name, init, call, path):
    attn = _float64(_make_attention(init, path=path))
    fwd = _forward_kwargs(call)
    x = _x(B, T, C, requires_grad=False)
    y, kv = attn(x, **fwd)
    bias = fwd.get("bias")
    want = attention_oracle(attn, x.numpy(), bias=bias, padding_mask=fwd.get("padding_mask"))
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-9, atol=1e-11)
    # the packed path returns no K/V; otherwise they stay Hkv heads wide (never repeated)
    assert (kv is None) == (path == "packed" and not fwd)
    if kv is not None:
        assert kv[0].shape == kv[1].shape == (B, attn.n_kv_head, T, attn.head_dim)


def test_packed_and_split_paths_agree_on_every_gradient(impl):
    tl.manual_seed(4)
    packed = _float64(_make_attention(dict(n_head=4, n_kv_head=2, rotary="rope")))
    split = _float64(_make_attention(dict(n_head=4, n_kv_head=2), path="split"))
    split.rotary = packed.rotary
    split.load_state_dict(packed.state_dict())
    grads = []
    for attn in (packed, split):
        x = _x(B, T, C)
        y, _ = attn(x)
        y.backward(tl.Tensor(np.random.default_rng(9).standard_normal(y.shape)))
        grads.append([x.grad.numpy()] + [p.grad.numpy() for p in attn.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_attention_t5_bias_gradcheck_reaches_the_table(device, impl):
    attn = _float64(MultiHeadAttention(C, 4, 2), device)
    t5 = _float64(T5RelativeBias(4, num_buckets=8, max_distance=16, device=device), device,
                  jitter=0.5)
    _check(lambda x: attn(x, bias=t5(T, T))[0], _x(B, T, C, device=device), attn, t5)


def test_attention_t5_bias_matches_oracle():
    attn = _float64(MultiHeadAttention(C, 4, 2, causal=False))
    t5 = _float64(T5RelativeBias(4, num_buckets=8, max_distance=16, bidirectional=True),
                  jitter=0.5)
    x = _x(B, T, C, requires_grad=False)
    bias = t5(T, T)
    want = attention_oracle(attn, x.numpy(), bias=bias.numpy())
    np.testing.assert_allclose(attn(x, bias=bias)[0].numpy(), want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("causal", [True, False])
def test_linear_attention_gradcheck(device, impl, causal):
    attn = _float64(LinearAttention(C, 4, causal=causal), device)
    _check(lambda x: attn(x)[0], _x(B, T, C, device=device), attn)


def test_linear_attention_gqa_equals_repeated_mha():
    gqa = _float64(LinearAttention(C, 4, 2))
    mha = _repeated_mha(gqa)
    x = _x(B, T, C, requires_grad=False)
    np.testing.assert_allclose(gqa(x)[0].numpy(), mha(x)[0].numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_shared_kv_gradcheck(device, impl, n_kv_head):
    # layer `second` projects only q and attends over the K/V that `first` returned; the
    # gradient of second's output reaches first's qkv through those K/V
    rope = RotaryEmbedding(2, 16, device=device)
    first = _float64(MultiHeadAttention(C, 4, n_kv_head, rotary=rope), device)
    first.provides_kv = True
    second = _float64(MultiHeadAttention(C, 4, n_kv_head, rotary=rope, shares_kv=True), device,
                      seed=2)
    assert [n for n, _ in second.named_parameters()][:2] == ["q.weight", "q.bias"]

    def run(x):
        h, kv = first(x)
        y, kv2 = second(h, shared_kv=kv)
        assert kv2[0] is kv[0] and kv2[1] is kv[1]
        return y

    _check(run, _x(B, T, C, device=device), first, second)


def test_shared_kv_matches_attention_over_the_given_kv():
    first = _float64(MultiHeadAttention(C, 4, 2))
    first.provides_kv = True
    second = _float64(MultiHeadAttention(C, 4, 2, shares_kv=True), seed=2)
    x, h = _x(B, T, C, requires_grad=False), _x(B, T, C, seed=5, requires_grad=False)
    _, (k, v) = first(x)
    y = second(h, shared_kv=(k, v))[0].numpy()
    # the same computation spelled out: q from second.q, K/V from first
    q = (h.numpy() @ second.q.weight.numpy().T + second.q.bias.numpy())
    q = q.reshape(B, T, 4, 2).transpose(0, 2, 1, 3)
    o = tl.nn.functional.scaled_dot_product_attention(tl.Tensor(q), k, v, is_causal=True)
    want = o.numpy().transpose(0, 2, 1, 3).reshape(B, T, C) @ second.proj.weight.numpy().T
    np.testing.assert_allclose(y, want + second.proj.bias.numpy(), rtol=1e-10, atol=1e-12)


# ---- GQA and MHA -------------------------------------------------------------------------
def _repeated_mha(gqa, interleaved=False):
    """An MHA layer (Hkv = H) whose K/V projection rows are gqa's, each repeated for the
    H / Hkv query heads of its group (query head h -> K/V head h // G), and whose other weights
    are gqa's, of gqa's class. interleaved=True maps h -> h % Hkv instead (the wrong grouping, as
    a control)."""
    H, Hkv, D = gqa.n_head, gqa.n_kv_head, gqa.head_dim
    mha = type(gqa)(C, H, H, bias=gqa.qkv.bias is not None, causal=gqa.causal,
                    window=gqa.window, rotary=gqa.rotary)
    mha.to(dtype=np.float64)
    # rows of qkv: [q heads 0..H-1 | k heads 0..Hkv-1 | v heads 0..Hkv-1], D rows each
    heads = np.arange(H) % Hkv if interleaved else np.arange(H) // (H // Hkv)
    rows = np.concatenate([np.arange(H * D)]
                          + [np.arange(D) + (H + g) * D for g in heads]
                          + [np.arange(D) + (H + Hkv + g) * D for g in heads])
    sd = {"qkv.weight": gqa.qkv.weight.numpy()[rows], "proj.weight": gqa.proj.weight.numpy()}
    if gqa.qkv.bias is not None:
        sd["qkv.bias"] = gqa.qkv.bias.numpy()[rows]
        sd["proj.bias"] = gqa.proj.bias.numpy()
    mha.load_state_dict(sd)
    return mha


@pytest.mark.parametrize("n_kv_head", [2, 1])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, 2])
def test_gqa_equals_mha_with_repeated_kv_rows(impl, n_kv_head, causal, window):
    gqa = _float64(MultiHeadAttention(C, 4, n_kv_head, causal=causal, window=window))
    mha = _repeated_mha(gqa)
    x = _x(B, T, C, requires_grad=False)
    y = gqa(x)[0].numpy()
    np.testing.assert_allclose(y, mha(x)[0].numpy(), rtol=1e-10, atol=1e-12)
    assert mha.qkv.weight.shape == (3 * C, C) and gqa.qkv.weight.shape[0] < 3 * C
    if n_kv_head > 1:     # the grouping matters: h -> h % Hkv is a different layer
        wrong = _repeated_mha(gqa, interleaved=True)
        assert not np.allclose(y, wrong(x)[0].numpy(), rtol=1e-6, atol=1e-8)


def test_gqa_with_n_kv_head_equal_n_head_is_mha(impl):
    tl.manual_seed(7)
    mha = MultiHeadAttention(C, 4)
    tl.manual_seed(7)
    gqa = MultiHeadAttention(C, 4, n_kv_head=4)
    assert mha.n_kv_head == 4
    x = _x(B, T, C, requires_grad=False).to(dtype=np.float32)
    np.testing.assert_array_equal(mha(x)[0].numpy(), gqa(x)[0].numpy())
    np.testing.assert_allclose(mha(x)[0].numpy(), attention_oracle(mha, x.numpy()),
                               rtol=1e-4, atol=1e-5)


# ---- which inputs each output depends on ---------------------------------------------------
def _dependence(fn, x):
    """dep[i, j]: output row i changes when input row j changes (B = 1)."""
    base = fn(x).numpy()
    Tx = x.shape[1]
    dep = np.zeros((Tx, Tx), bool)
    for j in range(Tx):
        x2 = x.numpy().copy()
        x2[:, j] += np.random.default_rng(j).standard_normal(x2.shape[-1])
        changed = np.abs(fn(tl.Tensor(x2)).numpy() - base).max(axis=-1)[0] > 1e-12
        dep[:, j] = changed
    return dep


MHA, LIN = MultiHeadAttention, LinearAttention


@pytest.mark.parametrize("layer, init", [
    (MHA, dict()), (MHA, dict(causal=False)), (MHA, dict(window=2)), (MHA, dict(window=3)),
    (LIN, dict()), (LIN, dict(causal=False)), (MHA, dict(n_kv_head=1, window=2))],
    ids=["causal", "bidirectional", "window_2", "window_3", "linear_causal",
         "linear_bidirectional", "mqa_window_2"])
def test_dependence_pattern(impl, layer, init):
    attn = _float64(layer(C, 4, **init))
    Tx = 6
    dep = _dependence(lambda x: attn(x)[0], _x(1, Tx, C, requires_grad=False))
    i, j = np.arange(Tx)[:, None], np.arange(Tx)[None, :]
    want = np.ones((Tx, Tx), bool)
    if attn.causal:
        want &= j <= i
    if attn.window is not None:
        want &= j > i - attn.window                         # nothing from j <= i - W
    np.testing.assert_array_equal(dep, want)


@pytest.mark.parametrize("causal", [True, False])
def test_padding_mask_hides_padded_inputs(impl, causal):
    attn = _float64(MultiHeadAttention(C, 4, 2, causal=causal))
    mask = PAD if causal else RIGHT_PAD        # causal: left padding (a padded prompt)
    x = _x(B, T, C, requires_grad=False)
    y = attn(x, padding_mask=mask)[0].numpy()
    x2 = x.numpy().copy()
    x2[~mask] = 100.0 * np.random.default_rng(3).standard_normal((int((~mask).sum()), C))
    y2 = attn(tl.Tensor(x2), padding_mask=mask)[0].numpy()
    np.testing.assert_allclose(y2[mask], y[mask], rtol=1e-12, atol=1e-12)
    # without the mask the real positions do see the change (the test can fail)
    y3 = attn(tl.Tensor(x2))[0].numpy()
    assert not np.allclose(y3[mask], y[mask])


def test_padding_mask_accepts_tensor_and_rejects_non_bool():
    attn = MultiHeadAttention(C, 4)
    x = _x(B, T, C, requires_grad=False).to(dtype=np.float32)
    a = attn(x, padding_mask=PAD)[0].numpy()
    b = attn(x, padding_mask=tl.Tensor(PAD))[0].numpy()
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="padding_mask"):
        attn(x, padding_mask=PAD.astype(np.int64))
    with pytest.raises(ValueError, match="padding_mask"):
        attn(x, padding_mask=PAD[0])


def test_attention_float32_stays_float32(impl):
    attn = MultiHeadAttention(C, 4, 2, rotary=RotaryEmbedding(2, 8))
    x = tl.Tensor(np.random.default_rng(0).standard_normal((B, T, C)).astype(np.float32),
                  requires_grad=True)
    y, _ = attn(x, padding_mask=PAD)
    assert y.dtype == np.float32
    y.backward(tl.Tensor(np.ones(y.shape, np.float32)))
    assert x.grad.dtype == np.float32
    assert all(p.grad.dtype == np.float32 for p in attn.parameters())


@pytest.mark.parametrize("kwargs, words", [
    (dict(dim=10, n_head=4), ["dim=10", "n_head=4"]),
    (dict(dim=8, n_head=4, n_kv_head=3), ["n_head=4", "n_kv_head=3"]),
    (dict(dim=8, n_head=4, n_kv_head=0), ["n_kv_head=0"]),
    (dict(dim=8, n_head=4, window=0), ["window", "0"]),
])
def test_attention_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as err:
        MultiHeadAttention(**kwargs)
    assert all(w in str(err.value) for w in words)


def test_attention_head_dim_override_and_runtime_errors():
    attn = MultiHeadAttention(10, 4, head_dim=3)                   # 10 % 4 != 0 is fine here
    assert attn.qkv.weight.shape == (3 * 4 * 3, 10) and attn.proj.weight.shape == (10, 12)
    x = tl.Tensor(np.zeros((1, 2, 10), np.float32))
    assert attn(x)[0].shape == (1, 2, 10)
    with pytest.raises(ValueError, match="shared_kv"):
        MultiHeadAttention(8, 4, shares_kv=True)(tl.Tensor(np.zeros((1, 2, 8), np.float32)))
    lin = LinearAttention(8, 4)
    with pytest.raises(ValueError, match="linear attention"):
        lin(tl.Tensor(np.zeros((1, 2, 8), np.float32)), padding_mask=np.ones((1, 2), bool))


# ---- the transformer block -----------------------------------------------------------------
def _block(prenorm, device="cpu", norm=LayerNorm, ffn="mlp"):
    attn = MultiHeadAttention(C, 4, 2, rotary=RotaryEmbedding(2, 16, device=device))
    ff = MLP(C, 12, "gelu_tanh") if ffn == "mlp" else SwiGLU(C, 12)
    return TransformerBlock(attn, ff, norm(C), norm(C), prenorm=prenorm)


@pytest.mark.parametrize("prenorm", [True, False], ids=["pre_ln", "post_ln"])
def test_block_gradcheck(device, impl, prenorm):
    block = _float64(_block(prenorm, device), device)
    _check(lambda x: block(x)[0], _x(B, T, C, device=device), block)


def test_block_rmsnorm_swiglu_padding_gradcheck(device, impl):
    block = _float64(_block(True, device, RMSNorm, "swiglu"), device)
    _check(lambda x: block(x, padding_mask=PAD)[0], _x(B, T, C, device=device), block)


@pytest.mark.parametrize("prenorm", [True, False], ids=["pre_ln", "post_ln"])
def test_block_matches_its_formula(prenorm):
    block = _float64(_block(prenorm))
    x = _x(B, T, C, requires_grad=False)
    block.attn.provides_kv = True
    y, kv = block(x)
    a, f, n1, n2 = block.attn, block.ffn, block.norm1, block.norm2
    if prenorm:       # x + attn(norm1(x)), then + ffn(norm2(.))
        h = x + a(n1(x))[0]
        want = h + f(n2(h))
    else:             # norm1(x + attn(x)), then norm2(. + ffn(.))
        h = n1(x + a(x)[0])
        want = n2(h + f(h))
    np.testing.assert_allclose(y.numpy(), want.numpy(), rtol=1e-12, atol=1e-12)
    assert kv[0].shape == (B, 2, T, 2)
    assert repr(block).startswith("TransformerBlock(pre-LN" if prenorm else
                                  "TransformerBlock(post-LN")
