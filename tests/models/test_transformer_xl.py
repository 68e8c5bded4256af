"""Transformer-XL (models/transformer_xl.py) and its attention (nn/relative_attention.py).

The central check is exact: with a relative position scheme and mem_len >= T, the logits of
segment 2 given segment 1's memory equal the last T positions of one forward over [seg1; seg2]
without memory (causality makes seg1's hidden states the same either way). A memory shorter than
seg1 must change them, so the check can fail. Around it: the rel-shift against an explicit
gather, the layer against Dai et al.'s score written out in NumPy, float64 gradchecks through
u, v, W_r and the shift, no gradient into the memory, equal parameters with mem_len = 0,
stream_nll and generate against full-context references, bad input, and a training step on
the stand-in "cuda" device that reads nothing but the loss.

Models are tiny (2 layers, C = 16, 4 heads, V = 13, segments of 4 to 8) so the file runs in
seconds.
"""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.models import TransformerXL, TransformerXLConfig
from tinygrad_llm.nn.positions import sinusoidal_table
from tinygrad_llm.nn.relative_attention import RelativeMultiHeadAttention, rel_shift
from tinygrad_llm.optim import AdamW

V = 13
POS = ["xl", "rope"]


def tiny(**overrides):
    base = dict(n_layer=2, n_head=4, n_embd=16, block_size=8, vocab_size=V, mem_len=8,
                dropout=0.0)
    return TransformerXLConfig(**{**base, **overrides})


def model64(**overrides):
    tl.manual_seed(0)
    return TransformerXL(tiny(**overrides)).to(dtype=np.float64)


def ids(shape, seed=0):
    return np.random.default_rng(seed).integers(0, V, shape)


# ---- the rel-shift ------------------------------------------------------------------------
@pytest.mark.parametrize("t, length", [(1, 1), (3, 3), (3, 7), (5, 6)])
def test_rel_shift_reads_each_row_at_its_distance(t, length):
    scores = np.random.default_rng(0).standard_normal((2, t, length))
    out = rel_shift(tl.Tensor(scores)).numpy()
    n_mem = length - t
    for i in range(t):
        for j in range(i + n_mem + 1):             # keys at or before the query
            distance = i + n_mem - j
            assert out[:, i, j] == pytest.approx(scores[:, i, length - 1 - distance])


def test_rel_shift_gradcheck():
    x = tl.Tensor(np.random.default_rng(1).standard_normal((2, 3, 4, 6)), requires_grad=True)
    assert tl.gradcheck(rel_shift, x)


# ---- the layer --------------------------------------------------------------------------------
def _layer(pos, n_kv_head=None, max_len=16):
    tl.manual_seed(0)
    layer = RelativeMultiHeadAttention(8, 2, pos=pos, n_kv_head=n_kv_head, max_len=max_len,
                                       dtype=np.float64)
    # nonzero biases, so that a bias routed to the wrong place shows
    for p in layer.parameters():
        p.data[...] = np.random.default_rng(p.numel()).standard_normal(p.shape) * 0.3
    return layer


def _xl_reference(layer, x, mem):
    """Dai et al.'s score written out: (q_i + u)^T k_j + (q_i + v)^T W_r R_{i+M-j}, causal."""
    h, d = layer.n_head, layer.head_dim
    w = {n: p.numpy() for n, p in layer.named_parameters()}
    context = np.concatenate([mem, x], axis=1)                      # (B, L, C)
    b, t, _ = x.shape
    length = context.shape[1]
    q = (x @ w["q.weight"].T + w["q.bias"]).reshape(b, t, h, d)
    kv = (context @ w["kv.weight"].T + w["kv.bias"]).reshape(b, length, 2, h, d)
    k, v = kv[:, :, 0], kv[:, :, 1]
    r = (sinusoidal_table(length, layer.dim) @ w["pos_proj.weight"].T).reshape(length, h, d)
    u, vb = w["content_bias"], w["position_bias"]
    out = np.zeros((b, t, h, d))
    for i in range(t):
        visible = i + length - t + 1
        for head in range(h):
            s = [((q[:, i, head] + u[head]) * k[:, j, head]).sum(-1)
                 + ((q[:, i, head] + vb[head]) * r[i + length - t - j, head]).sum(-1)
                 for j in range(visible)]
            s = np.stack(s, axis=-1) / np.sqrt(d)                    # (B, visible)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out[:, i, head] = np.einsum("bj,bjd->bd", p, v[:, :visible, head])
    return out.reshape(b, t, h * d) @ w["proj.weight"].T + w["proj.bias"]


@pytest.mark.parametrize("n_mem", [0, 2, 5])
def test_xl_attention_is_dai_et_al_score(n_mem):
    layer = _layer("xl")
    rng = np.random.default_rng(2)
    x, mem = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, n_mem, 8))
    got = layer(tl.Tensor(x), tl.Tensor(mem) if n_mem else None).numpy()
    np.testing.assert_allclose(got, _xl_reference(layer, x, mem), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pos, n_kv_head", [("xl", None), ("rope", None), ("xl", 1)])
def test_layer_gradcheck_through_u_v_w_r_and_the_shift(pos, n_kv_head):
    layer = _layer(pos, n_kv_head)
    rng = np.random.default_rng(3)
    x = tl.Tensor(rng.standard_normal((2, 3, 8)), requires_grad=True)
    mem = tl.Tensor(rng.standard_normal((2, 2, 8)), requires_grad=True)
    params = [p for _, p in layer.named_parameters()]
    names = [n for n, _ in layer.named_parameters()]
    if pos == "xl":
        assert {"content_bias", "position_bias", "pos_proj.weight"} <= set(names)
    assert tl.gradcheck(lambda x, mem, *_: layer(x, mem), x, mem, *params)


def test_rope_layer_sees_offsets_not_positions():
    """RoPE at true offsets: the same [memory; segment] gives the same output whether the
    boundary between them falls here or there."""
    layer = _layer("rope")
    context = np.random.default_rng(4).standard_normal((1, 6, 8))
    a = layer(tl.Tensor(context[:, 3:]), tl.Tensor(context[:, :3])).numpy()
    b = layer(tl.Tensor(context), None).numpy()[:, 3:]
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_position_tables_grow_for_a_longer_context():
    for pos in POS:
        layer = _layer(pos, max_len=4)
        context = np.random.default_rng(5).standard_normal((1, 9, 8))
        a = layer(tl.Tensor(context[:, 6:]), tl.Tensor(context[:, :6])).numpy()
        b = layer(tl.Tensor(context), None).numpy()[:, 6:]
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# ---- the model: the exact check ---------------------------------------------------------------
@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("mem_len", [4, 6])
def test_segment_with_memory_equals_the_joint_forward(pos, mem_len):
    model = model64(pos=pos, mem_len=mem_len)
    x = ids((2, 8))
    _, mems = model(x[:, :4])
    logits, _ = model(x[:, 4:], mems=mems)
    joint, _ = model(x, mem_len=0)
    np.testing.assert_allclose(logits.numpy(), joint.numpy()[:, 4:], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pos", POS)
def test_a_shorter_memory_changes_the_logits(pos):
    model = model64(pos=pos, mem_len=2)
    x = ids((2, 8))
    _, mems = model(x[:, :4])
    assert mems[0].shape == (2, 2, 16)
    logits, _ = model(x[:, 4:], mems=mems)
    joint, _ = model(x)
    assert np.abs(logits.numpy() - joint.numpy()[:, 4:]).max() > 1e-4


def test_memory_keeps_the_last_mem_len_inputs_of_each_layer():
    model = model64(mem_len=6)
    x = ids((2, 8))
    _, m1 = model(x[:, :4])
    _, m2 = model(x[:, 4:], mems=m1)
    _, m_joint = model(x, mem_len=8)
    assert len(m2) == 2 and all(m.shape == (2, 6, 16) for m in m2)
    emb = model.tok_emb.weight.numpy()[x]                       # layer 0's input
    np.testing.assert_array_equal(m_joint[0].numpy(), emb)
    for a, b in zip(m2, m_joint):
        np.testing.assert_allclose(a.numpy(), b.numpy()[:, 2:], rtol=1e-10, atol=1e-12)


def test_mem_len_zero_is_the_model_without_memory_with_equal_parameters():
    with_mem, without = model64(mem_len=8), model64(mem_len=0)
    a = {n: p.numpy() for n, p in with_mem.named_parameters()}
    b = {n: p.numpy() for n, p in without.named_parameters()}
    assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)
    assert with_mem.num_parameters() == without.num_parameters()
    x = ids((2, 8))
    _, mems = without(x[:, :4])
    assert all(m.shape == (2, 0, 16) for m in mems)
    carried, _ = without(x[:, 4:], mems=mems)
    alone, _ = without(x[:, 4:])
    np.testing.assert_array_equal(carried.numpy(), alone.numpy())


@pytest.mark.parametrize("pos", POS)
def test_no_gradient_reaches_the_memory(pos):
    """The second segment's gradients are those of a memory given as plain constants: nothing
    flows back into the first segment's graph."""
    model = model64(pos=pos)
    x, y = ids((2, 8)), ids((2, 8), seed=1)
    _, loss1, mems = model(x[:, :4], y[:, :4])             # with a graph
    assert all(not m.requires_grad for m in mems)
    model.zero_grad()
    _, loss2, _ = model(x[:, 4:], y[:, 4:], mems=mems)
    loss2.backward()
    carried = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    model.zero_grad()
    constants = [tl.Tensor(m.numpy().copy()) for m in mems]
    _, loss3, _ = model(x[:, 4:], y[:, 4:], mems=constants)
    loss3.backward()
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(carried[n], p.grad.numpy(), err_msg=n)


@pytest.mark.parametrize("pos", POS)
def test_whole_model_directional_gradcheck_with_memory(pos):
    model = model64(pos=pos, mem_len=4)
    x, y = ids((2, 8)), ids((2, 8), seed=1)
    with tl.no_grad():
        _, mems = model(x[:, :4])
    params = dict(model.named_parameters())
    names = ["tok_emb.weight", "blocks.0.attn.q.weight", "blocks.1.attn.kv.weight",
             "blocks.0.norm1.weight", "blocks.1.ffn.down.weight", "norm.weight"]
    if pos == "xl":
        names += ["blocks.0.attn.content_bias", "blocks.1.attn.position_bias",
                  "blocks.0.attn.pos_proj.weight"]
    chosen = [params[n] for n in names]
    assert tl.gradcheck(lambda *_: model(x[:, 4:], y[:, 4:], mems)[1], *chosen, directions=4)


# ---- evaluation and generation ------------------------------------------------------------
@pytest.mark.parametrize("pos", POS)
def test_stream_nll_with_full_memory_equals_one_forward(pos):
    model = model64(pos=pos, block_size=24)
    stream = ids(20, seed=3)
    logits, _ = model(stream[None, :-1], mem_len=0)
    logp = logits.numpy()[0] - np.log(np.exp(logits.numpy()[0]).sum(-1, keepdims=True))
    expected = -logp[np.arange(19), stream[1:]]
    got = model.stream_nll(stream, segment_len=5, mem_len=24)
    assert got.dtype == np.float64 and got.shape == (19,)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    # without memory each segment starts blind, so the later segments' first tokens differ
    blind = model.stream_nll(stream, segment_len=5, mem_len=0)
    np.testing.assert_allclose(blind[:5], expected[:5], rtol=1e-10)
    assert abs(blind[5] - expected[5]) > 1e-6


def test_generate_carries_the_memory_across_segments():
    """Greedy decoding in segments of 4 with a memory of the whole past picks the same tokens as
    greedy decoding that re-reads the whole sequence each step (a model with the same weights
    and a longer block_size)."""
    model = model64(block_size=4, mem_len=32)
    full = model64(block_size=32, mem_len=0)
    full.load_state_dict(model.state_dict())
    prompt = ids((2, 6), seed=4)
    out = model.generate(prompt, 14, temperature=0)
    assert out.shape == (2, 20) and np.array_equal(out[:, :6], prompt)
    seq = prompt
    for _ in range(14):
        logits, _ = full(seq)
        seq = np.concatenate([seq, logits.numpy()[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)
    sampled = model.generate(prompt[0], 5, temperature=1.0, top_k=3, seed=1)
    assert sampled.shape == (1, 11)
    np.testing.assert_array_equal(sampled, model.generate(prompt[0], 5, temperature=1.0,
                                                          top_k=3, seed=1))


# ---- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, word", [
    (dict(mem_len=-1), "mem_len"), (dict(pos="learned"), "pos"), (dict(window=4), "window"),
    (dict(n_expert=2), "n_expert"), (dict(pos="rope", n_embd=12, n_head=4), "head_dim")])
def test_bad_config_raises_naming_the_field(overrides, word):
    with pytest.raises(ValueError, match=word):
        tiny(**overrides)


def test_bad_input_raises_naming_the_argument():
    model = model64()
    x = ids((2, 4))
    _, mems = model(x)
    with pytest.raises(ValueError, match="block_size"):
        model(ids((2, 9)))
    with pytest.raises(ValueError, match="mems"):
        model(x, mems=mems[:1])
    with pytest.raises(ValueError, match=r"mems\[0\]"):
        model(x[:1], mems=mems)                            # batch 1 against memories of 2
    with pytest.raises(ValueError, match=r"mems\[1\]"):
        model(x, mems=[mems[0], mems[1][:, :2]])           # layers disagree on M
    with pytest.raises(ValueError, match="mem_len"):
        model(x, mem_len=-2)
    with pytest.raises(ValueError, match="segment_len"):
        model.stream_nll(ids(30), segment_len=9)
    with pytest.raises(ValueError, match="ids"):
        model.stream_nll(ids((2, 30)))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(x, -1)
    layer = _layer("xl")
    with pytest.raises(ValueError, match="mem"):
        layer(tl.Tensor(np.zeros((2, 3, 8))), tl.Tensor(np.zeros((2, 3, 7))))
    with pytest.raises(ValueError, match="pos"):
        RelativeMultiHeadAttention(8, 2, pos="alibi")


# ---- on the device --------------------------------------------------------------------------
@pytest.fixture
def gpu(standin_cuda):
    with tl.use_kernels(False):
        yield standin_cuda


@pytest.mark.parametrize("pos", POS)
def test_training_steps_on_the_device_read_only_the_loss(gpu, pos):
    tl.manual_seed(0)
    model = TransformerXL(tiny(pos=pos, mem_len=4, block_size=4)).to("cuda")
    opt = AdamW(model.parameters(), lr=1e-2)
    stream = ids((2, 13), seed=5)
    mems, losses = None, []
    for s in range(3):
        x, y = stream[:, 4 * s:4 * s + 4], stream[:, 4 * s + 1:4 * s + 5]
        with gpu.measure() as c:
            _, loss, mems = model(x, y, mems=mems)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        if s:                                  # the first step allocates the optimizer state
            assert c.syncs == 1, c.sync_sites
            assert c.upcasts == 0, c.upcast_sites
            assert c.h2d_bytes <= 2 * x.nbytes, c.h2d_bytes     # the ids and targets only
    tl.manual_seed(0)
    cpu = TransformerXL(tiny(pos=pos, mem_len=4, block_size=4))
    opt = AdamW(cpu.parameters(), lr=1e-2)
    mems = None
    for s in range(3):
        _, loss, mems = cpu(stream[:, 4 * s:4 * s + 4], stream[:, 4 * s + 1:4 * s + 5], mems)
        loss.backward()
        opt.step()
        opt.zero_grad()
        assert loss.item() == pytest.approx(losses[s], rel=1e-5)


def test_stream_nll_and_generate_on_the_device_match_the_cpu(device, impl):
    tl.manual_seed(0)
    model = TransformerXL(tiny(mem_len=4, block_size=4))
    on_device = TransformerXL(tiny(mem_len=4, block_size=4))
    on_device.load_state_dict(model.state_dict())
    on_device.to(device)
    stream = ids(15, seed=6)
    np.testing.assert_allclose(on_device.stream_nll(stream), model.stream_nll(stream),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(on_device.generate(stream[:5], 6, temperature=0),
                                  model.generate(stream[:5], 6, temperature=0))


def test_generation_on_the_device_reads_one_value_per_token(gpu):
    tl.manual_seed(0)
    model = TransformerXL(tiny(mem_len=4, block_size=4)).to("cuda")
    prompt = ids((1, 3), seed=7)
    model.generate(prompt, 2, temperature=0.8, top_k=5)
    with gpu.measure() as short:
        model.generate(prompt, 2, temperature=0.8, top_k=5)
    with gpu.measure() as long:
        model.generate(prompt, 8, temperature=0.8, top_k=5)    # crosses segment boundaries
    assert long.syncs - short.syncs == 6, long.sync_sites
    assert long.upcasts == 0, long.upcast_sites
