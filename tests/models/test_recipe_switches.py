"""The architecture switches of the modded-nanogpt recipe (issue 27): GPTConfig's qk_norm,
mlp="relu2", logit_softcap, unet_skips, value_embeds and zero_init_proj.

Each switch is checked five ways: the forward equals a NumPy transcription of its formula on a
tiny float64 model (`numpy_forward`, an independent oracle written from the papers' equations);
float64 gradchecks through it, its new parameters included; the KV-cached decoders give the
full forward's logits and greedy tokens; a checkpoint round-trips the config; and with every
switch off the model has the parameter names and the outputs it had before the switches
existed.

Models are tiny (2 layers, C = 16, 4 heads, V = 13); `tiny(preset, **overrides)` builds them.
"""
import json

import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.nn.functional as F
from tinygrad_llm import backend, kernels, no_grad
from tinygrad_llm.generate import generate
from tinygrad_llm.generate.decode_step import DecodePlan, forward_logits
from tinygrad_llm.generate.kv_cache import make_caches
from tinygrad_llm.models.gpt import GPT, GPTConfig, soft_cap
from tinygrad_llm.nn.attention import MultiHeadAttention
from tinygrad_llm.train.checkpoint import load_model, save_checkpoint
from tinygrad_llm.train.recipes import SPEEDRUN_MODEL

V = 13
SWITCHES = {                       # name -> the overrides that turn the switch on
    "qk_norm": dict(qk_norm=True),
    "relu2": dict(mlp="relu2"),
    "softcap": dict(logit_softcap=0.5),       # below the tiny model's logits: it really bends
    "unet": dict(unet_skips=True),
    "value_embed": dict(value_embeds=1),
    "all": dict(qk_norm=True, mlp="relu2", logit_softcap=0.5, unet_skips=True, value_embeds=1),
}


def tiny(preset="gpt2", dtype=np.float64, seed=0, device="cpu", **overrides):
    tl.manual_seed(seed)
    base = dict(n_layer=2, n_head=4, n_embd=16, block_size=12, vocab_size=V)
    if preset == "llama":
        base["n_kv_head"] = 2
    return GPT(GPTConfig.preset(preset, **{**base, **overrides})).to(device, dtype=dtype)


def _batch(B=2, T=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def _spread_gains(model, seed=1):
    """Move every norm gain (the QK-norm ones included), U-net weight and value-embedding gain
    off its initial ones, so a test sees whether each is applied where it should be."""
    rng = np.random.default_rng(seed)
    with no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm1" in name or "norm2" in name:
                if p.ndim == 1 and not name.endswith("bias"):
                    gain = 1 + 0.5 * rng.standard_normal(p.shape)
                    p.data[...] = backend.to_device(gain.astype(p.dtype), p.device)
        if model.skip_weights is not None:
            w = rng.uniform(-1.5, 1.5, model.skip_weights.shape)
            model.skip_weights.data[...] = backend.to_device(w.astype(model.skip_weights.dtype),
                                                             model.skip_weights.device)
        if model.value_gains is not None:
            g = model.value_gains
            g.data[...] = backend.to_device(rng.uniform(-1.5, 1.5, g.shape).astype(g.dtype),
                                            g.device)


# ---- the oracle: the model's forward written out in NumPy ----------------------------------
def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + (0 if b is None else b)


def _rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope(x, cos, sin):
    """x: (B, H, T, D); the rotate-half pairing (dims i and i + D/2)."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def numpy_forward(model, idx):
    """Logits (B, T, V) of a pre-LN GPT (learned or RoPE positions, MHA or GQA, any MLP kind)
    computed from its parameter arrays with the formulas of the switches:
      qk_norm:  q <- q / rms(q) * g_q,  k <- k / rms(k) * g_k  per head, before RoPE
      relu2:    act(u) = max(u, 0)^2
      softcap:  logits <- c tanh(logits / c)
      unet:     before layer L - n + j (n = L // 2): x <- x + w_j * (output of layer n - 1 - j)
      value:    for i < k, layers i and L - 1 - i: v <- v + g * E_i[idx], g the gain of that
                layer among the receiving ones (0..k-1, L-k..L-1) in layer order"""
    c = model.config
    P = {n: p.numpy().astype(np.float64) for n, p in model.named_parameters()}
    eps, H, Hkv, D = c.norm_eps, c.n_head, c.n_kv_head, c.head_dim
    B, T = idx.shape

    def norm(x, name):
        if c.norm == "rmsnorm":
            return _rms_norm(x, P[name + ".weight"], eps)
        return _layer_norm(x, P[name + ".weight"], P.get(name + ".bias"), eps)

    def linear(x, name):
        return x @ P[name + ".weight"].T + P.get(name + ".bias", 0)

    x = P["tok_emb.weight"][idx]                                          # (B, T, C)
    if c.pos == "learned":
        x = x + P["pos_emb.weight"][:T]
    causal = np.triu(np.ones((T, T), bool), 1)
    n_skip = c.n_layer // 2 if c.unet_skips else 0
    receivers = list(range(c.value_embeds)) + list(range(c.n_layer - c.value_embeds, c.n_layer))
    outputs = []
    for i in range(c.n_layer):
        pre = f"blocks.{i}."
        if i >= c.n_layer - n_skip:
            j = i - (c.n_layer - n_skip)
            x = x + P["skip_weights"][j] * outputs[n_skip - 1 - j]
        qkv = linear(norm(x, pre + "norm1"), pre + "attn.qkv").reshape(B, T, H + 2 * Hkv, D)
        if i in receivers:
            table = P[f"value_embeds.{min(i, c.n_layer - 1 - i)}.weight"][idx]    # (B, T, Hkv D)
            gain = P["value_gains"][receivers.index(i)]
            qkv[:, :, H + Hkv:] += gain * table.reshape(B, T, Hkv, D)
        q, k, v = (a.transpose(0, 2, 1, 3) for a in
                   (qkv[:, :, :H], qkv[:, :, H:H + Hkv], qkv[:, :, H + Hkv:]))
        if c.qk_norm:
            q = _rms_norm(q, P[pre + "attn.q_norm.weight"], eps)
            k = _rms_norm(k, P[pre + "attn.k_norm.weight"], eps)
        if c.pos == "rope":
            cos = backend.to_numpy(model.rotary.cos[:T]).astype(np.float64)
            sin = backend.to_numpy(model.rotary.sin[:T]).astype(np.float64)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        k, v = (np.repeat(a, H // Hkv, axis=1) for a in (k, v))       # head h reads h // G
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D)
        s = np.where(causal, -np.inf, s)
        p = np.exp(s - s.max(-1, keepdims=True))
        o = (p / p.sum(-1, keepdims=True)) @ v                              # (B, H, T, D)
        x = x + linear(o.transpose(0, 2, 1, 3).reshape(B, T, H * D), pre + "attn.proj")
        h = norm(x, pre + "norm2")
        if c.mlp == "swiglu":
            g = linear(h, pre + "ffn.gate")
            u = g / (1 + np.exp(-g)) * linear(h, pre + "ffn.up")
        else:
            u = linear(h, pre + "ffn.up")
            u = {"relu2": lambda a: np.maximum(a, 0) ** 2, "relu": lambda a: np.maximum(a, 0),
                 "gelu_tanh": lambda a: 0.5 * a * (1 + np.tanh(
                     np.sqrt(2 / np.pi) * (a + 0.044715 * a ** 3)))}[c.mlp](u)
        x = x + linear(u, pre + "ffn.down")
        outputs.append(x)
    logits = norm(x, "norm") @ P["head.weight" if "head.weight" in P else "tok_emb.weight"].T
    if c.logit_softcap is not None:
        logits = c.logit_softcap * np.tanh(logits / c.logit_softcap)
    return logits


# ---- configuration -------------------------------------------------------------------------
def test_switches_default_off():
    c = GPTConfig()
    assert c.qk_norm is False and c.logit_softcap is None and c.mlp == "gelu_tanh"
    assert c.unet_skips is False and c.zero_init_proj is False and c.value_embeds == 0
    assert GPTConfig.preset("llama").qk_norm is False


def test_relu2_keeps_the_mlp_width():
    assert GPTConfig(n_embd=64, n_head=4, mlp="relu2").ffn_hidden == 4 * 64


@pytest.mark.parametrize("overrides, error, words", [
    (dict(qk_norm=1), TypeError, ["qk_norm", "bool", "1"]),
    (dict(qk_norm="yes"), TypeError, ["qk_norm", "'yes'"]),
    (dict(unet_skips=None), TypeError, ["unet_skips", "bool", "None"]),
    (dict(zero_init_proj=0.0), TypeError, ["zero_init_proj", "0.0"]),
    (dict(logit_softcap=0), ValueError, ["logit_softcap", "positive", "0"]),
    (dict(logit_softcap=-15.0), ValueError, ["logit_softcap", "-15.0"]),
    (dict(logit_softcap=float("inf")), ValueError, ["logit_softcap", "inf"]),
    (dict(logit_softcap=True), TypeError, ["logit_softcap", "True"]),
    (dict(logit_softcap="30"), TypeError, ["logit_softcap", "'30'"]),
    (dict(mlp="relu3"), ValueError, ["mlp", "relu3", "relu2"]),
    (dict(value_embeds=True), TypeError, ["value_embeds", "int", "True"]),
    (dict(value_embeds=1.0), TypeError, ["value_embeds", "int", "1.0"]),
    (dict(value_embeds=-1), ValueError, ["value_embeds=-1", "between 0 and n_layer // 2 = 6"]),
    (dict(value_embeds=7), ValueError, ["value_embeds=7", "between 0 and n_layer // 2 = 6"]),
    (dict(value_embeds=1, n_layer=1), ValueError, ["value_embeds=1", "n_layer // 2 = 0"]),
    (dict(value_embeds=1, kv_share=2), ValueError, ["value_embeds=1", "kv_share=1",
                                                    "kv_share=2"]),
])
def test_bad_switch_values_raise_at_config_time(overrides, error, words):
    with pytest.raises(error) as err:
        GPTConfig(n_embd=16, n_head=4, **overrides)
    for word in words:
        assert word in str(err.value)


def test_value_embeds_take_up_to_half_the_layers_and_are_stored_as_an_int():
    c = GPTConfig(n_embd=16, n_head=4, n_layer=5, value_embeds=np.int64(2))
    assert type(c.value_embeds) is int and c.value_embeds == 2
    assert json.loads(json.dumps(c.to_dict()))["value_embeds"] == 2


def test_softcap_is_stored_as_a_float():
    c = GPTConfig(n_embd=16, n_head=4, logit_softcap=np.int64(15))
    assert type(c.logit_softcap) is float and c.logit_softcap == 15.0
    assert json.loads(json.dumps(c.to_dict()))["logit_softcap"] == 15.0


# ---- switches off: the model of before -----------------------------------------------------
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_switches_off_keep_names_and_outputs(preset):
    explicit = tiny(preset, qk_norm=False, logit_softcap=None, unet_skips=False,
                    zero_init_proj=False, value_embeds=0)
    default = tiny(preset)
    names = [n for n, _ in default.named_parameters()]
    assert names == [n for n, _ in explicit.named_parameters()]
    assert not any("q_norm" in n or "k_norm" in n or "skip" in n or "value" in n for n in names)
    idx, _ = _batch()
    with no_grad():
        np.testing.assert_array_equal(default(idx).numpy(), explicit(idx).numpy())
    # and the default model is still the plain GPT the oracle describes
    np.testing.assert_allclose(default(idx).numpy(), numpy_forward(default, idx), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_qk_norm_adds_two_gains_per_layer_and_draws_no_random_numbers(preset):
    off, on = tiny(preset), tiny(preset, qk_norm=True)
    p_off, p_on = dict(off.named_parameters()), dict(on.named_parameters())
    added = set(p_on) - set(p_off)
    assert set(p_off) <= set(p_on)
    assert added == {f"blocks.{i}.attn.{w}_norm.weight" for i in range(2) for w in "qk"}
    for name in added:
        assert p_on[name].shape == (on.config.head_dim,)
        np.testing.assert_array_equal(p_on[name].numpy(), 1.0)
    for name in p_off:                  # the same seed draws the same weights
        np.testing.assert_array_equal(p_on[name].numpy(), p_off[name].numpy(), err_msg=name)


def test_relu2_and_softcap_add_no_parameters():
    base = [n for n, _ in tiny().named_parameters()]
    assert [n for n, _ in tiny(mlp="relu2").named_parameters()] == base
    assert [n for n, _ in tiny(logit_softcap=3.0).named_parameters()] == base


@pytest.mark.parametrize("n_layer, n_skip", [(1, 0), (2, 1), (5, 2)])
def test_unet_skips_add_one_weight_per_receiving_layer(n_layer, n_skip):
    off, on = tiny(n_layer=n_layer), tiny(n_layer=n_layer, unet_skips=True)
    p_off, p_on = dict(off.named_parameters()), dict(on.named_parameters())
    assert set(p_on) - set(p_off) == {"skip_weights"}
    np.testing.assert_array_equal(p_on["skip_weights"].numpy(), np.ones(n_skip))
    for name in p_off:
        np.testing.assert_array_equal(p_on[name].numpy(), p_off[name].numpy(), err_msg=name)


@pytest.mark.parametrize("n_layer", [4, 5])
def test_unet_skips_pair_mirrored_layers(n_layer):
    model = tiny("llama", n_layer=n_layer, unet_skips=True)
    _spread_gains(model)
    idx, _ = _batch()
    np.testing.assert_allclose(model(idx).numpy(), numpy_forward(model, idx), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("n_layer, k", [(2, 1), (5, 2)])
def test_value_embeds_add_k_tables_and_a_gain_per_receiving_layer(preset, n_layer, k):
    off, on = tiny(preset, n_layer=n_layer), tiny(preset, n_layer=n_layer, value_embeds=k)
    p_off, p_on = dict(off.named_parameters()), dict(on.named_parameters())
    tables = {f"value_embeds.{i}.weight" for i in range(k)}
    assert set(p_on) - set(p_off) == tables | {"value_gains"}
    width = on.config.n_kv_head * on.config.head_dim
    for name in tables:                      # drawn as the token table is: N(0, 0.02)
        assert p_on[name].shape == (V, width)
        assert 0.01 < p_on[name].numpy().std() < 0.03, name
    assert len({p_on[n].numpy().tobytes() for n in tables}) == k         # k different draws
    np.testing.assert_array_equal(p_on["value_gains"].numpy(), np.ones(2 * k))
    for name in p_off:                       # the tables draw last: the rest is the default
        np.testing.assert_array_equal(p_on[name].numpy(), p_off[name].numpy(), err_msg=name)
    # the tables are embeddings: left out of the non-embedding count, the gains are not
    assert on.num_parameters(non_embedding=True) == off.num_parameters(non_embedding=True) + 2 * k


def test_value_embeds_keep_float32_forward_and_backward():
    model = tiny("llama", np.float32, n_layer=4, value_embeds=2)
    idx, tgt = _batch()
    logits, loss = model(idx, tgt)
    loss.backward()
    assert logits.dtype == np.float32 and loss.dtype == np.float32
    for name, p in model.named_parameters():
        assert p.grad.dtype == np.float32, name


@pytest.mark.parametrize("n_layer, k", [(3, 1), (4, 2), (5, 2)])
def test_value_embeds_feed_the_first_and_last_k_layers(n_layer, k):
    model = tiny("llama", n_layer=n_layer, value_embeds=k)
    _spread_gains(model)
    idx, _ = _batch()
    np.testing.assert_allclose(model(idx).numpy(), numpy_forward(model, idx), rtol=1e-10,
                               atol=1e-12)


def test_value_embeds_are_embeddings_for_the_optimizers_and_their_gains_never_decay():
    from tinygrad_llm.optim import muon_param_groups, param_groups_for_weight_decay
    model = tiny("llama", n_layer=4, value_embeds=2)
    params = dict(model.named_parameters())
    tables = {id(params[f"value_embeds.{i}.weight"]) for i in range(2)}
    gains = id(params["value_gains"])
    groups = muon_param_groups(model, muon_lr=0.02, adam_lr=1e-3, weight_decay=0.1,
                               embed_lr=5e-3)
    embed = next(g for g in groups if id(model.tok_emb.weight) in map(id, g["params"]))
    assert tables <= set(map(id, embed["params"])) and not embed["muon"]
    assert embed["lr"] * embed["lr_scale"] == pytest.approx(5e-3)
    home = next(g for g in groups if gains in map(id, g["params"]))
    assert home["weight_decay"] == 0.0 and not home["muon"]
    assert home["lr"] * home["lr_scale"] == pytest.approx(1e-3)
    for decay_embeddings, table_decay in ((True, 0.1), (False, 0.0)):
        groups = param_groups_for_weight_decay(model, 0.1, decay_embeddings=decay_embeddings)
        decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
        assert decay_of[gains] == 0.0
        assert {decay_of[t] for t in tables} == {table_decay}
        assert decay_of[id(model.tok_emb.weight)] == table_decay


def test_zero_init_proj_zeroes_only_the_residual_projections():
    for preset in ("gpt2", "llama"):
        off, on = tiny(preset), tiny(preset, zero_init_proj=True)
        p_off, p_on = dict(off.named_parameters()), dict(on.named_parameters())
        assert list(p_on) == list(p_off)
        zeroed = {n for n in p_on if n.endswith(("attn.proj.weight", "ffn.down.weight"))}
        assert len(zeroed) == 2 * on.config.n_layer
        for name, p in p_on.items():
            if name in zeroed:
                assert not p.numpy().any(), name
            else:             # the same random numbers are drawn: the rest is the default
                np.testing.assert_array_equal(p.numpy(), p_off[name].numpy(), err_msg=name)
    # every block starts as the identity: the logits are the head over the normed embeddings
    model = tiny("gpt2", zero_init_proj=True)
    idx, _ = _batch()
    P = {n: p.numpy() for n, p in model.named_parameters()}
    x = P["tok_emb.weight"][idx] + P["pos_emb.weight"][:idx.shape[1]]
    want = _layer_norm(x, P["norm.weight"], P["norm.bias"], 1e-5) @ P["tok_emb.weight"].T
    np.testing.assert_allclose(model(idx).numpy(), want, rtol=1e-10, atol=1e-12)
    # and the zeroed projections still receive a gradient, so training moves them
    model(idx, idx)[1].backward()
    assert np.abs(model.blocks[1].attn.proj.weight.grad.numpy()).max() > 0


# ---- each switch computes its formula ------------------------------------------------------
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("switch", SWITCHES)
def test_forward_matches_the_numpy_formula(device, impl, preset, switch):
    model = tiny(preset, device=device, **SWITCHES[switch])
    _spread_gains(model)
    idx, _ = _batch()
    want = numpy_forward(model, idx)
    got = model(idx).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # the oracle can tell the switch apart: turning it off moves the logits
    plain = numpy_forward(tiny(preset), idx)
    assert np.abs(got - plain).max() > 1e-3


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("switch", ["qk_norm", "value_embed", "all"])
def test_packed_path_equals_split_path(device, impl, preset, switch):
    # the packed path norms the q and k slots and adds the value embedding to the v slots
    # inside the (B, T, H + 2 Hkv, D) projection; provides_kv forces the split one (q, k, v
    # apart): outputs and every gradient agree
    model = tiny(preset, device=device, **SWITCHES[switch])
    _spread_gains(model)
    idx, tgt = _batch()

    def run():
        model.zero_grad()
        logits, loss = model(idx, tgt)
        loss.backward()
        return logits.numpy().copy(), {n: p.grad.numpy().copy()
                                       for n, p in model.named_parameters()}

    packed = run()
    for block in model.blocks:
        block.attn.provides_kv = True
    split = run()
    np.testing.assert_allclose(split[0], packed[0], rtol=1e-11, atol=1e-12)
    for name, g in packed[1].items():
        assert np.abs(g).max() > 0, name
        np.testing.assert_allclose(split[1][name], g, rtol=1e-10, atol=1e-12, err_msg=name)


def test_qk_norm_bounds_the_attention_logits():
    # scaling the q and k rows of the projection by 1000 changes nothing once q and k are
    # normalised (eps tiny, so it does not set a scale of its own); without QK-norm it does
    idx, _ = _batch()
    for qk_norm, moves in ((True, False), (False, True)):
        model = tiny("llama", qk_norm=qk_norm, norm_eps=1e-12)
        before = model(idx).numpy()
        with no_grad():
            for block in model.blocks:
                a = block.attn
                a.qkv.weight.data[:(a.n_head + a.n_kv_head) * a.head_dim] *= 1000.0
        after = model(idx).numpy()
        assert (np.abs(after - before).max() > 1e-3) == moves


def test_shared_kv_layer_norms_only_its_queries():
    attn = MultiHeadAttention(16, 4, qk_norm=True, shares_kv=True)
    assert attn.q_norm is not None and attn.k_norm is None
    assert sorted(n for n, _ in attn.named_parameters()) == [
        "proj.bias", "proj.weight", "q.bias", "q.weight", "q_norm.weight"]
    model = tiny("gpt2", qk_norm=True, kv_share=2)
    _spread_gains(model)
    params = dict(model.named_parameters())
    assert "blocks.1.attn.k_norm.weight" not in params
    idx, tgt = _batch()
    model(idx, tgt)[1].backward()
    # layer 1 attends with its own normed queries over layer 0's normed keys
    for name in ("blocks.0.attn.k_norm.weight", "blocks.1.attn.q_norm.weight"):
        assert np.abs(params[name].grad.numpy()).max() > 1e-6, name


def test_softcap_bounds_the_logits_and_the_loss_uses_them():
    model = tiny(logit_softcap=0.05)
    idx, tgt = _batch()
    logits, loss = model(idx, tgt)
    assert np.abs(logits.numpy()).max() < 0.05
    np.testing.assert_allclose(loss.item(), F.cross_entropy(logits, tgt).item(), rtol=1e-14)


# ---- gradients -----------------------------------------------------------------------------
def test_relu2_gradcheck_elementwise():
    # values kept away from the kink at 0, where finite differences straddle two branches
    x = np.random.default_rng(0).uniform(0.1, 2.0, (3, 5)) * np.where(
        np.random.default_rng(1).random((3, 5)) < 0.5, -1, 1)
    xt = tl.Tensor(x, requires_grad=True)
    assert tl.gradcheck(F.relu2, xt)
    np.testing.assert_array_equal(F.relu2(xt).numpy(), np.maximum(x, 0) ** 2)


def _logits_loss_grads(model, idx, tgt):
    model.zero_grad()
    logits, loss = model(idx, tgt)
    loss.backward()
    return logits.numpy(), loss.item(), {n: p.grad.numpy() for n, p in model.named_parameters()}


def test_relu2_model_takes_the_fused_kernels():
    """The speedrun recipe's model (mlp="relu2") runs the squared ReLU as Relu2Op's Numba
    kernels, one forward and one backward per layer (not relu and a product), and agrees with
    the reference path on logits, loss and every gradient (float32)."""
    model = tiny(dtype=np.float32, **SPEEDRUN_MODEL)
    assert model.config.mlp == "relu2"
    idx, tgt = _batch()
    with tl.use_kernels(False):
        want = _logits_loss_grads(model, idx, tgt)
    with tl.use_kernels(True), kernels.trace() as log:
        got = _logits_loss_grads(model, idx, tgt)
    n = model.config.n_layer
    assert [e for e in log if e[0].startswith("relu2")] == (
        [("relu2_forward", "cpu")] * n + [("relu2_backward", "cpu")] * n)
    assert not [name for name, _ in log if name.startswith("gelu")]
    assert got[0].dtype == np.float32
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4 * np.abs(want[0]).max())
    assert abs(got[1] - want[1]) <= 1e-4 * abs(want[1])
    for name, g in want[2].items():
        np.testing.assert_allclose(got[2][name], g, rtol=1e-4, atol=1e-4 * np.abs(g).max(),
                                   err_msg=name)


def test_soft_cap_gradcheck_elementwise():
    x = tl.Tensor(np.random.default_rng(2).standard_normal((4, 7)) * 20, requires_grad=True)
    assert tl.gradcheck(lambda a: soft_cap(a, 15.0), x)
    assert soft_cap(x, None) is x


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("switch", SWITCHES)
def test_whole_model_directional_gradcheck(impl, preset, switch):
    model = tiny(preset, **SWITCHES[switch])
    _spread_gains(model)
    idx, tgt = _batch(2, 6)
    tgt[1, 0] = -100
    params = dict(model.named_parameters())
    names = ["tok_emb.weight", "blocks.0.attn.qkv.weight", "blocks.1.ffn.up.weight",
             "blocks.1.attn.proj.weight", "norm.weight"]
    names += [n for n in params if "q_norm" in n or "k_norm" in n or n == "skip_weights"
              or n.startswith("value_")]
    chosen = [params[n] for n in names]
    assert tl.gradcheck(lambda *_: model(idx, tgt)[1], *chosen, directions=4)
    assert tl.gradcheck(lambda *_: model(idx), *chosen, directions=4)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_value_embeds_gradcheck_every_element(preset):
    # the loss w.r.t. every entry of the table and both gains, in float64; layer 1 of 3 takes
    # no table, and ids 0 and 12 appear nowhere, so their rows must get exactly zero
    model = tiny(preset, n_layer=3, value_embeds=1)
    _spread_gains(model)
    idx, tgt = _batch(2, 5, seed=5)
    idx[idx == 0], idx[idx == 12], tgt[0, 1] = 1, 11, -100
    table, gains = model.value_embeds[0].weight, model.value_gains
    assert tl.gradcheck(lambda *_: model(idx, tgt)[1], table, gains)
    grad = table.grad.numpy()
    used = np.isin(np.arange(V), idx)
    assert np.abs(grad[used]).max(axis=1).min() > 0 and not grad[~used].any()
    assert np.abs(gains.grad.numpy()).min() > 0


# ---- decoding with a KV cache --------------------------------------------------------------
def _cached_logits(model, ids, split, **cache_args):
    """Logits of every position of ids (T,): ids[:split] at once, then one token at a time,
    through the decoders' entry point (the fused step when its plan applies); cache_args go to
    make_caches (implementation and its settings)."""
    caches = make_caches(model, 1, model.config.max_positions, **cache_args)
    with no_grad():
        out = [forward_logits(model, ids[:split], caches, 0)]
        out += [forward_logits(model, ids[i:i + 1], caches, i) for i in range(split, len(ids))]
    return np.concatenate([np.asarray(o) for o in out])


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("switch", SWITCHES)
def test_cached_decoding_equals_the_full_forward(preset, switch):
    model = tiny(preset, np.float32, **SWITCHES[switch]).eval()
    _spread_gains(model)
    ids = np.random.default_rng(3).integers(0, V, 10)
    with no_grad():
        full = model(ids[None]).numpy()[0]
    got = _cached_logits(model, ids, 4)
    np.testing.assert_allclose(got, full, rtol=0, atol=1e-5 * np.abs(full).max())


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("switch", SWITCHES)
def test_cached_generate_equals_uncached_greedy(preset, switch, batch):
    model = tiny(preset, np.float32, **SWITCHES[switch]).eval()
    _spread_gains(model)
    prompt = np.random.default_rng(4).integers(0, V, (batch, 3))
    cached = generate(model, prompt, 8, temperature=0)
    uncached = generate(model, prompt, 8, temperature=0, use_cache=False)
    np.testing.assert_array_equal(cached, uncached)
    # and the uncached decoder really follows the capped / normed model, token by token
    with no_grad():
        for t in range(3, cached.shape[1]):
            step = model(cached[:, :t]).numpy()[:, -1]
            np.testing.assert_array_equal(step.argmax(-1), cached[:, t])


@pytest.mark.parametrize("preset, kind, room", [("llama", "sinks", {"n_sink": 1, "window": 10}),
                                               ("gpt2", "h2o", {"budget": 12})])
def test_a_cache_that_attends_itself_gets_the_value_embeddings_too(preset, kind, room):
    # these caches take the attention step over (MultiHeadAttention._attend_in_cache); with
    # room for every token they evict nothing, so they give the full forward's logits
    model = tiny(preset, np.float32, value_embeds=1).eval()
    _spread_gains(model)
    ids = np.random.default_rng(3).integers(0, V, 10)
    with no_grad():
        full = model(ids[None]).numpy()[0]
    got = _cached_logits(model, ids, 4, implementation=kind, **room)
    np.testing.assert_allclose(got, full, rtol=0, atol=1e-5 * np.abs(full).max())


# ---- checkpoints ---------------------------------------------------------------------------
def test_checkpoint_round_trips_the_switches(tmp_path):
    model = tiny("llama", np.float32, **SWITCHES["all"])
    _spread_gains(model)
    path = str(tmp_path / "ckpt.safetensors")
    save_checkpoint(path, model, record={"model_config": model.config.to_dict()})
    loaded, _, record = load_model(path)
    assert loaded.config == model.config
    c = loaded.config
    assert (c.qk_norm, c.mlp, c.logit_softcap, c.unet_skips, c.value_embeds) == (
        True, "relu2", 0.5, True, 1)
    idx, _ = _batch()
    with no_grad():
        np.testing.assert_array_equal(loaded(idx).numpy(), model.eval()(idx).numpy())


def test_state_dict_round_trips_the_value_embeddings():
    model = tiny("llama", n_layer=4, value_embeds=2)
    _spread_gains(model)
    state = model.state_dict()
    assert {"value_embeds.0.weight", "value_embeds.1.weight", "value_gains"} <= set(state)
    fresh = tiny("llama", n_layer=4, value_embeds=2, seed=9)
    idx, _ = _batch()
    with no_grad():
        assert np.abs(fresh(idx).numpy() - model(idx).numpy()).max() > 1e-3
        fresh.load_state_dict(state)
        np.testing.assert_array_equal(fresh(idx).numpy(), model(idx).numpy())
    with pytest.raises(ValueError, match="value_embeds.0.weight"):
        tiny("llama", n_layer=4).load_state_dict(state)          # no tables to put them in


def test_a_record_from_before_the_switches_loads_with_them_off():
    d = tiny().config.to_dict()
    for key in ("qk_norm", "logit_softcap", "unet_skips", "zero_init_proj", "value_embeds"):
        d.pop(key)
    c = GPTConfig(**d)
    assert c == GPTConfig.preset("gpt2", **{k: v for k, v in d.items()})
    assert not c.qk_norm and c.logit_softcap is None and not c.unet_skips and not c.zero_init_proj
    assert c.value_embeds == 0


def _pretrained_round_trip(model, path):
    model.save_pretrained(str(path))
    loaded = GPT.from_pretrained(str(path), dtype=np.float64)
    idx, _ = _batch()
    with no_grad():
        want = model.eval()(idx).numpy()             # the file holds float32 weights
        np.testing.assert_allclose(loaded(idx).numpy(), want, rtol=1e-5, atol=1e-6)
    return loaded


def test_save_pretrained_round_trips_the_switches_in_the_native_layout(tmp_path):
    # relu2 has no Hugging Face equivalent, so the model is written in the library's own layout
    model = tiny("gpt2", **SWITCHES["all"])
    _spread_gains(model)
    assert _pretrained_round_trip(model, tmp_path).config == model.config


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("switch", ["qk_norm", "softcap", "unet", "value_embed"])
def test_save_pretrained_round_trips_each_switch(tmp_path, preset, switch):
    model = tiny(preset, **SWITCHES[switch])
    _spread_gains(model)
    assert _pretrained_round_trip(model, tmp_path).config == model.config
    # Hugging Face's GPT-2 and Llama have no such switch: the native layout is written
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "tinygrad_llm"


@pytest.mark.parametrize("switch,why", [("qk_norm", "QK-norm"), ("softcap", "soft-capping"),
                                        ("unet", "U-net"), ("relu2", "relu2"),
                                        ("value_embed", "value embeddings")])
def test_the_fused_decode_step_refuses_what_it_does_not_compute(switch, why):
    # batch-1 decoding then goes through the model's forward, which has every switch
    assert why in DecodePlan.reason(tiny("llama", np.float32, **SWITCHES[switch]))
    assert DecodePlan.reason(tiny("llama", np.float32)) is None


@pytest.mark.parametrize("field,value", [("logit_softcap", 30.0), ("unet_skips", True),
                                         ("zero_init_proj", True), ("value_embeds", 1)])
def test_models_without_a_switch_refuse_it(field, value):
    from tinygrad_llm.models import Encoder
    from tinygrad_llm.models.transformer_xl import TransformerXLConfig
    config = GPTConfig.preset("gpt2", n_layer=2, n_head=2, n_embd=16, block_size=8,
                              vocab_size=V, **{field: value})
    with pytest.raises(ValueError, match=f"Encoder: {field}="):
        Encoder(config)
    with pytest.raises(ValueError, match=f"TransformerXLConfig: {field}="):
        TransformerXLConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=V,
                            **{field: value})
    with pytest.raises(ValueError, match="TransformerXLConfig: qk_norm="):
        TransformerXLConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=V,
                            qk_norm=True)
