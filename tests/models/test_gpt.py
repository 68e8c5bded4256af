"""GPT (models/gpt.py): the configuration and its presets, shapes and the loss, causality of every
variant, the fused kernels against the reference on logits, loss and every gradient, a whole-model
directional gradcheck in float64 (llm.c's whole-model test), GPT-2's initialisation, tied and
untied embeddings, parameter counts, input checks, the MoE auxiliary loss, and a few SGD steps.

Models are tiny (2 layers, C = 16, 4 heads, V = 13) so the file runs in seconds; `tiny(preset,
**overrides)` builds their configuration. Causality is checked by changing the token at t + 1
and asserting that no logit at positions <= t moves, while later logits do (so the test can
fail).
"""
import math

import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.nn.functional as F
from tinygrad_llm import kernels
from tinygrad_llm.models.gpt import GPT, PRESETS, GPTConfig

V = 13


def tiny(preset="gpt2", **overrides):
    """A 2-layer, C=16, H=4 configuration of `preset` (llama: Hkv=2) with V=13, block_size=8."""
    base = dict(n_layer=2, n_head=4, n_embd=16, block_size=8, vocab_size=V)
    if preset == "llama":
        base["n_kv_head"] = 2
    return GPTConfig.preset(preset, **{**base, **overrides})


def _batch(B=2, T=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


# ---- configuration -------------------------------------------------------------------------
def test_gpt2_preset_fields():
    c = GPTConfig.preset("gpt2")
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd) == (50257, 1024, 12, 12,
                                                                           768)
    assert c.n_kv_head == 12 and c.head_dim == 64 and c.ffn_hidden == 4 * 768
    assert (c.norm, c.mlp, c.pos, c.bias, c.tie_embeddings) == ("layernorm", "gelu_tanh",
                                                                "learned", True, True)
    assert c.norm_eps == 1e-5 and c.prenorm and c.attention == "softmax"


def test_llama_preset_fields():
    c = GPTConfig.preset("llama")
    assert (c.norm, c.mlp, c.pos, c.bias, c.tie_embeddings) == ("rmsnorm", "swiglu", "rope",
                                                                False, False)
    assert c.n_head == 16 and c.n_kv_head == 4 and c.head_dim == 1024 // 16
    assert c.rope_theta == 10000.0 and c.vocab_size == 32000
    # SwiGLU hidden: 8/3 C rounded up to a multiple of 32
    assert c.ffn_hidden == 32 * math.ceil(8 * 1024 / 3 / 32) == 2752


def test_preset_overrides_and_derived_fields():
    c = GPTConfig.preset("llama", n_layer=3, n_embd=96, n_head=6, n_kv_head=2, rope_theta=5e5)
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.head_dim) == (3, 96, 6, 2, 16)
    assert c.rope_theta == 5e5 and c.norm == "rmsnorm"
    assert c.ffn_hidden == 256                                # 8/3 * 96 = 256
    assert GPTConfig.preset("gpt2", ffn_hidden=50).ffn_hidden == 50
    # the preset table itself is not modified by overrides
    assert PRESETS["llama"]["n_layer"] == 16
    assert c.to_dict()["n_layer"] == 3


def test_llama_preset_keeps_its_grouping_ratio_when_n_head_changes():
    # the preset's Hkv / H = 4 / 16; overriding n_head alone keeps the ratio (largest divisor)
    assert GPTConfig.preset("llama", n_head=8, n_embd=64).n_kv_head == 2
    assert GPTConfig.preset("llama", n_head=32, n_embd=64).n_kv_head == 8
    assert GPTConfig.preset("llama", n_head=2, n_embd=64).n_kv_head == 1
    assert GPTConfig.preset("llama", n_head=8, n_kv_head=8, n_embd=64).n_kv_head == 8
    assert GPTConfig.preset("gpt2", n_head=8, n_embd=64).n_kv_head == 8


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError) as err:
        GPTConfig.preset("gpt3")
    assert "gpt3" in str(err.value) and "gpt2" in str(err.value) and "llama" in str(err.value)


def test_unknown_field_raises():
    with pytest.raises(ValueError, match="n_layers"):
        GPTConfig.preset("gpt2", n_layers=2)
    with pytest.raises(TypeError, match="n_layers"):
        GPTConfig(n_layers=2)


@pytest.mark.parametrize("overrides, words", [
    (dict(n_embd=18, n_head=4), ["n_embd=18", "n_head=4"]),
    (dict(n_head=4, n_kv_head=3), ["n_head=4", "n_kv_head=3"]),
    (dict(norm="batchnorm"), ["norm", "batchnorm", "layernorm"]),
    (dict(mlp="swish"), ["mlp", "swish", "swiglu"]),
    (dict(pos="random"), ["pos", "random", "rope"]),
    (dict(attention="flash"), ["attention", "flash", "linear"]),
    (dict(kv_share=0), ["kv_share", "0"]),
    (dict(pos="rope", n_embd=12, n_head=4), ["RoPE", "head_dim", "3"]),
])
def test_bad_config_raises_at_config_time(overrides, words):
    with pytest.raises(ValueError) as err:
        tiny("gpt2", **overrides)
    assert all(w in str(err.value) for w in words), str(err.value)


# ---- forward, loss, shapes -----------------------------------------------------------------
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_forward_shapes_and_loss(preset):
    model = GPT(tiny(preset))
    idx, tgt = _batch(3, 5)
    logits = model(idx)
    assert logits.shape == (3, 5, V) and logits.dtype == np.float32
    logits2, loss = model(idx, tgt)
    np.testing.assert_array_equal(logits.numpy(), logits2.numpy())
    want = F.cross_entropy(tl.Tensor(logits.numpy()), tgt).item()
    assert loss.shape == () and abs(loss.item() - want) < 1e-6
    # near-uniform predictions at init: loss close to log V
    assert abs(loss.item() - math.log(V)) < 0.5
    # ids as a list and as a Tensor
    np.testing.assert_array_equal(model(tl.Tensor(idx)).numpy(), logits.numpy())
    assert model(idx[:1, :2].tolist()).shape == (1, 2, V)


def test_loss_ignores_minus_100():
    model = GPT(tiny())
    idx, tgt = _batch()
    tgt[:, :3] = -100
    logits, loss = model(idx, tgt)
    lp = logits.numpy()[:, 3:].astype(np.float64)
    lp = lp - lp.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    want = -np.take_along_axis(lp, tgt[:, 3:, None], -1).mean()
    assert abs(loss.item() - want) < 1e-5


# ---- causality, every variant --------------------------------------------------------------
VARIANTS = [
    ("gpt2", "gpt2", {}),
    ("llama", "llama", {}),
    ("learned", "gpt2", dict(pos="learned")),
    ("sinusoidal", "gpt2", dict(pos="sinusoidal")),
    ("rope", "gpt2", dict(pos="rope")),
    ("alibi", "gpt2", dict(pos="alibi")),
    ("t5", "gpt2", dict(pos="t5", t5_num_buckets=8, t5_max_distance=16)),
    ("no_positions", "gpt2", dict(pos="none")),
    ("window_2", "llama", dict(window=2)),
    ("kv_share_2", "llama", dict(kv_share=2, n_layer=4)),
    ("moe_4", "llama", dict(n_expert=4, n_expert_per_token=2)),
    ("moe_4_mlp_k1", "gpt2", dict(n_expert=4, n_expert_per_token=1)),
    ("linear_attention", "gpt2", dict(attention="linear")),
    ("post_ln", "gpt2", dict(prenorm=False)),
    ("post_ln_llama", "llama", dict(prenorm=False)),
]


@pytest.mark.parametrize("name, preset, overrides", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_causality(impl, name, preset, overrides):
    model = GPT(tiny(preset, **overrides)).to(dtype=np.float64)
    idx, _ = _batch(2, 8)
    base = model(idx).numpy()
    for t in range(7):
        changed = idx.copy()
        changed[:, t + 1] = (changed[:, t + 1] + 1 + t) % V
        out = model(changed).numpy()
        np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-12,
                                   err_msg=f"{name}: token {t + 1} changed a logit at <= {t}")
        assert not np.allclose(out[:, t + 1], base[:, t + 1]), f"{name}: t+1 did not change"


def test_linear_attention_with_grouped_kv():
    model = GPT(tiny("llama", attention="linear"))
    idx, _ = _batch()
    assert model(idx).shape == (2, 8, V)


def test_window_and_kv_share_are_wired():
    model = GPT(tiny("llama", window=2, kv_share=2, n_layer=4))
    attns = [b.attn for b in model.blocks]
    assert [a.shares_kv for a in attns] == [False, True, False, True]
    assert all(a.window == 2 for a in attns)
    assert not hasattr(attns[1], "qkv") and hasattr(attns[1], "q")
    assert all(b.attn.kind == "linear" for b in GPT(tiny("gpt2", attention="linear")).blocks)


# ---- fused kernels against the reference ---------------------------------------------------
def _run(model, idx, tgt):
    model.zero_grad()
    logits, loss = model(idx, tgt)
    loss.backward()
    return (logits.numpy().copy(), loss.item(),
            {n: p.grad.numpy().copy() for n, p in model.named_parameters()})


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-4), (np.float64, 1e-11)],
                         ids=["float32", "float64"])
def test_fused_path_equals_reference(preset, dtype, rtol):
    model = GPT(tiny(preset)).to(dtype=dtype)
    idx, tgt = _batch(2, 8)
    tgt[0, :2] = -100
    with tl.use_kernels(False), kernels.trace() as ref_log:
        logits_r, loss_r, grads_r = _run(model, idx, tgt)
    with tl.use_kernels(True), kernels.trace() as fast_log:
        logits_f, loss_f, grads_f = _run(model, idx, tgt)
    # two different paths: every family the reference ran that has a Numba kernel, the fast run
    # took in it (RoPE and SwiGLU have CUDA kernels only: their reference is the CPU path)
    assert {impl for _, impl in ref_log} == {"reference"}
    numba = set(kernels.registered("cpu"))
    assert {impl for name, impl in fast_log if name in numba} == {"cpu"}
    assert {name for name, impl in fast_log if impl != "cpu"} <= {
        "rope_forward", "rope_backward", "packed_rope_forward", "packed_rope_backward",
        "swiglu_forward", "swiglu_backward"}
    assert {name for name, _ in fast_log} == {name for name, _ in ref_log}
    assert {"packed_attention_forward", "packed_attention_backward"} <= {n for n, _ in fast_log}
    assert logits_f.dtype == dtype and grads_f["tok_emb.weight"].dtype == dtype
    scale = np.abs(logits_r).max()
    np.testing.assert_allclose(logits_f, logits_r, rtol=rtol, atol=rtol * scale)
    assert abs(loss_f - loss_r) <= rtol * abs(loss_r)
    assert grads_f.keys() == grads_r.keys() and len(grads_r) == len(list(model.parameters()))
    for name in grads_r:
        g = grads_r[name]
        np.testing.assert_allclose(grads_f[name], g, rtol=rtol, atol=rtol * np.abs(g).max(),
                                   err_msg=name)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_packed_attention_path_equals_split_path(impl, preset):
    # the blocks attend on the packed qkv projection unless K/V are needed separately;
    # provides_kv = True forces the split path (q, k, v, then scaled_dot_product_attention)
    model = GPT(tiny(preset)).to(dtype=np.float64)
    idx, tgt = _batch(2, 8)
    packed = _run(model, idx, tgt)
    for block in model.blocks:
        block.attn.provides_kv = True
    split = _run(model, idx, tgt)
    np.testing.assert_allclose(split[0], packed[0], rtol=1e-11, atol=1e-12)
    assert abs(split[1] - packed[1]) < 1e-12
    for name in packed[2]:
        np.testing.assert_allclose(split[2][name], packed[2][name], rtol=1e-10, atol=1e-12,
                                   err_msg=name)


# ---- whole-model gradcheck -----------------------------------------------------------------
@pytest.mark.parametrize("preset, overrides", [("gpt2", {}), ("llama", {}),
                                               ("llama", dict(n_expert=4))],
                         ids=["gpt2", "llama", "llama_moe"])
def test_whole_model_directional_gradcheck(impl, preset, overrides):
    model = GPT(tiny(preset, **overrides)).to(dtype=np.float64)
    idx, tgt = _batch(2, 6)
    tgt[1, 0] = -100
    params = dict(model.named_parameters())
    names = ["tok_emb.weight", "blocks.0.attn.qkv.weight", "blocks.1.attn.proj.weight",
             "blocks.0.norm1.weight", "norm.weight",
             "blocks.1.ffn.router.weight" if overrides else "blocks.1.ffn.down.weight"]
    names += ["pos_emb.weight", "blocks.0.attn.qkv.bias"] if preset == "gpt2" else \
        ["head.weight"]
    chosen = [params[n] for n in names]
    # the loss (scalar, random cotangent) and the logits (random (B, T, V) cotangent)
    assert tl.gradcheck(lambda *_: model(idx, tgt)[1], *chosen, directions=4)
    assert tl.gradcheck(lambda *_: model(idx), *chosen, directions=4)


# ---- initialisation, tying, counts ---------------------------------------------------------
def test_gpt2_init_statistics():
    n_layer = 4
    model = GPT(tiny("gpt2", n_layer=n_layer, n_embd=64, n_head=4, vocab_size=512,
                     block_size=64))
    residual_std = 0.02 / math.sqrt(2 * n_layer)
    for name, p in model.named_parameters():
        w = p.numpy()
        if name.endswith("bias"):
            assert np.all(w == 0), name
        elif "norm" in name:
            assert np.all(w == 1), name
        elif name.endswith(("attn.proj.weight", "ffn.down.weight")):
            assert abs(w.std() / residual_std - 1) < 0.1, (name, w.std())
            assert abs(w.mean()) < 0.2 * residual_std
        else:
            assert abs(w.std() / 0.02 - 1) < 0.1, (name, w.std())
            assert abs(w.mean()) < 0.004
    assert model.blocks[0].norm1.bias is not None


def test_tied_and_untied_embeddings():
    gpt2 = GPT(tiny("gpt2"))
    assert gpt2.head.weight is gpt2.tok_emb.weight
    names = [n for n, _ in gpt2.named_parameters()]
    assert "tok_emb.weight" in names and "head.weight" not in names
    assert "head.weight" in gpt2.state_dict()
    # the one array gets both gradients
    idx, tgt = _batch()
    gpt2(idx, tgt)[1].backward()
    assert gpt2.head.weight.grad is gpt2.tok_emb.weight.grad
    llama = GPT(tiny("llama"))
    assert llama.head.weight is not llama.tok_emb.weight
    assert not np.shares_memory(llama.head.weight.data, llama.tok_emb.weight.data)
    assert "head.weight" in [n for n, _ in llama.named_parameters()]


def test_num_parameters():
    gpt2 = GPT(tiny("gpt2"))
    total = sum(p.numel() for p in gpt2.parameters())
    C, L, Fh = 16, 2, 64
    per_block = (C * 3 * C + 3 * C) + (C * C + C) + (C * Fh + Fh) + (Fh * C + C) + 4 * C
    assert total == gpt2.num_parameters() == V * C + 8 * C + L * per_block + 2 * C
    assert gpt2.num_parameters(non_embedding=True) == total - V * C - 8 * C
    llama = GPT(tiny("llama"))
    total = sum(p.numel() for p in llama.parameters())
    assert llama.num_parameters() == total
    assert llama.num_parameters(non_embedding=True) == total - V * C     # the head stays
    assert llama.head.weight.numel() == V * C


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_state_dict_round_trip(preset):
    tl.manual_seed(1)
    src = GPT(tiny(preset))
    tl.manual_seed(2)
    dst = GPT(tiny(preset))
    idx, _ = _batch()
    assert not np.allclose(src(idx).numpy(), dst(idx).numpy())
    sd = {k: v.numpy().copy() for k, v in src.state_dict().items()}
    assert ("head.weight" in sd) and ("blocks.1.attn.qkv.weight" in sd)
    assert dst.load_state_dict(sd) == ([], [])
    np.testing.assert_array_equal(src(idx).numpy(), dst(idx).numpy())
    if preset == "gpt2":
        assert dst.head.weight is dst.tok_emb.weight


def test_dropout_only_in_training():
    model = GPT(tiny("gpt2", dropout=0.5))
    idx, _ = _batch()
    assert not np.allclose(model(idx).numpy(), model(idx).numpy())
    model.eval()
    np.testing.assert_array_equal(model(idx).numpy(), model(idx).numpy())


# ---- input checks --------------------------------------------------------------------------
def test_sequence_longer_than_block_size():
    model = GPT(tiny("gpt2"))
    assert model(np.zeros((1, 8), np.int64)).shape == (1, 8, V)
    with pytest.raises(ValueError, match="block_size=8"):
        model(np.zeros((1, 9), np.int64))
    llama = GPT(tiny("llama"))
    with pytest.raises(ValueError, match="block_size=8"):
        llama(np.zeros((1, 9), np.int64))


def test_rope_scaling_extends_the_context():
    model = GPT(tiny("llama", rope_scaling={"type": "linear", "factor": 2}))
    assert model.config.max_positions == 16
    idx = np.random.default_rng(0).integers(0, V, (1, 16))
    assert model(idx).shape == (1, 16, V)
    with pytest.raises(ValueError, match="block_size=8"):
        model(np.zeros((1, 17), np.int64))
    # linear interpolation: position p of the scaled model is position p / 2 of the plain one,
    # so the scaled model sees the first 8 tokens differently from the unscaled one
    tl.manual_seed(0)
    plain = GPT(tiny("llama"))
    tl.manual_seed(0)
    scaled = GPT(tiny("llama", rope_scaling={"type": "linear", "factor": 2}))
    assert not np.allclose(plain(idx[:, :8]).numpy(), scaled(idx[:, :8]).numpy())


@pytest.mark.parametrize("bad", [13, -1, 100])
def test_ids_outside_the_vocabulary(bad):
    model = GPT(tiny())
    idx = np.array([[1, 2, bad, 3]])
    with pytest.raises(ValueError, match=f"id {bad} .*range.*13"):
        model(idx)


def test_bad_id_arrays():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="idx"):
        model(np.zeros((8,), np.int64))
    with pytest.raises(TypeError, match="integer"):
        model(np.zeros((1, 4), np.float32))


# ---- mixture of experts --------------------------------------------------------------------
def test_moe_loss_includes_the_auxiliary_losses():
    model = GPT(tiny("llama", n_expert=4, n_expert_per_token=2, moe_aux_loss_coef=0.5,
                     moe_z_loss_coef=0.1))
    idx, tgt = _batch()
    logits, loss = model(idx, tgt)
    ce = F.cross_entropy(tl.Tensor(logits.numpy()), tgt).item()
    aux = sum(b.ffn.aux_loss.item() + b.ffn.z_loss.item() for b in model.blocks)
    assert aux > 0.5 * 2 * 0.9                   # each layer's balance loss is >= coef * ~1
    assert abs(loss.item() - (ce + aux)) < 1e-5
    assert abs(model.auxiliary_loss().item() - aux) < 1e-6
    # the router learns from the loss (through the gates and the auxiliary loss)
    loss.backward()
    assert np.abs(model.blocks[0].ffn.router.weight.grad.numpy()).sum() > 0


def test_dense_model_loss_has_no_auxiliary_term():
    model = GPT(tiny("llama"))
    idx, tgt = _batch()
    logits, loss = model(idx, tgt)
    assert abs(loss.item() - F.cross_entropy(tl.Tensor(logits.numpy()), tgt).item()) < 1e-6


# ---- training ------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_sgd_steps_reduce_the_loss(preset):
    model = GPT(tiny(preset))
    idx, tgt = _batch(4, 8, seed=1)
    losses = []
    for _ in range(15):
        model.zero_grad()
        _, loss = model(idx, tgt)
        loss.backward()
        losses.append(loss.item())
        for p in model.parameters():
            p.data -= 0.5 * p.grad.data
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    assert model.tok_emb.weight.dtype == np.float32
