"""tinygrad_llm.eval.interp: attention maps against a hand computation (softmax(q k^T / sqrt(D))
with the causal mask, from the layer's own weights) and against the model's own attention output
(P v through the projection equals what the layer returns, packed path, RoPE, GQA and windows
included); prefix-matching scores and copy losses on planted maps and losses; the ICL score's
positions; the probe sequences; bad inputs named."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.eval.interp import (attention_maps, copy_losses, icl_score,
                                      prefix_matching_scores, repeated_tokens, token_losses)
from tinygrad_llm.models import GPT, GPTConfig

V = 17


def tiny(**overrides):
    return GPTConfig.preset("gpt2", **{**dict(n_layer=2, n_head=4, n_embd=16, block_size=12,
                                              vocab_size=V), **overrides})


def _ids(b=2, t=10, seed=0):
    return np.random.default_rng(seed).integers(0, V, (b, t))


def test_one_layer_maps_equal_the_hand_computation():
    model = GPT(tiny(n_layer=1, mlp="none")).to(dtype=np.float64)
    idx = _ids()
    (maps,) = attention_maps(model, idx)
    b, t = idx.shape
    # by hand: embeddings, LayerNorm (no affine shift: weight only, bias 0), the qkv projection
    x = model.tok_emb.weight.numpy()[idx] + model.pos_emb.weight.numpy()[:t]
    norm = model.blocks[0].norm1
    h = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + norm.eps)
    h = h * norm.weight.numpy() + norm.bias.numpy()
    qkv = h @ model.blocks[0].attn.qkv.weight.numpy().T + model.blocks[0].attn.qkv.bias.numpy()
    q = qkv[..., :16].reshape(b, t, 4, 4).transpose(0, 2, 1, 3)
    k = qkv[..., 16:32].reshape(b, t, 4, 4).transpose(0, 2, 1, 3)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(4)
    scores = np.where(np.triu(np.ones((t, t), bool), 1), -np.inf, scores)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    assert maps.shape == (b, 4, t, t) and maps.dtype == np.float64
    np.testing.assert_allclose(maps, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-12)
    assert np.all(maps[..., np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] == 0)


@pytest.mark.parametrize("overrides", [
    dict(), dict(mlp="none", pos="rope"), dict(pos="rope", n_kv_head=2, qk_norm=True),
    dict(pos="alibi", window=3), dict(pos="t5", prenorm=False)],
    ids=["gpt2", "attn_only_rope", "gqa_qknorm", "alibi_window", "t5_postln"])
def test_maps_reproduce_every_layers_attention_output(overrides):
    """The oracle is the model itself: P v (v from the layer, K/V heads shared by their query
    heads) through the output projection equals the attention output the layer computes."""
    model = GPT(tiny(**overrides)).to(dtype=np.float64)
    model.train()
    idx = _ids(t=9)
    maps = attention_maps(model, idx)
    assert model.training                                     # the mode is restored
    with tl.no_grad():
        x = model.tok_emb(idx)
        if model.pos_emb is not None:
            x = x + model.pos_emb(9, 0)
        bias = tl.models.gpt.position_bias(model.pos_bias, 9, 9, x)
        for block, p in zip(model.blocks, maps):
            attn = block.attn
            h = block.norm1(x) if block.prenorm else x
            _, _, v = attn._project(h, 0, None)
            v = np.repeat(v.numpy(), attn.n_head // attn.n_kv_head, axis=1)   # (B, H, T, D)
            o = (p @ v).transpose(0, 2, 1, 3).reshape(2, 9, -1)
            expected = attn(h, bias=bias)[0].numpy()
            np.testing.assert_allclose(attn.proj(tl.Tensor(o)).numpy(), expected, rtol=1e-9,
                                       atol=1e-11)
            x, _ = block(x, bias=bias)
        np.testing.assert_allclose(model.head(model.norm(x) if model.norm else x).numpy(),
                                   model(idx).numpy(), rtol=1e-10, atol=1e-12)


def test_unsupported_models_and_bad_ids_are_named():
    with pytest.raises(ValueError, match="attention_maps: .*kv_share=2"):
        attention_maps(GPT(tiny(kv_share=2)), _ids())
    with pytest.raises(ValueError, match="attention_maps: .*attention='linear'"):
        attention_maps(GPT(tiny(attention="linear")), _ids())
    model = GPT(tiny())
    with pytest.raises(ValueError, match="idx: 13 tokens exceed the model's block_size=12"):
        attention_maps(model, _ids(t=13))
    with pytest.raises(ValueError, match=r"idx: expected \(B, T\) integer token ids"):
        token_losses(model, np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="idx: expected sequences that repeat with period 5"):
        prefix_matching_scores(model, _ids())
    with pytest.raises(ValueError, match="period: expected 1 <= period < T=10, got 10"):
        copy_losses(model, np.tile(_ids(t=5), 2), period=10)


def test_prefix_matching_scores_on_planted_maps():
    r, t = 4, 8
    idx = repeated_tokens(3, r, V, np.random.default_rng(0))
    model = GPT(tiny())
    induction = np.zeros((3, 1, t, t))
    for i in range(t):
        induction[:, 0, i, i - r + 1 if i >= r else 0] = 1.0
    uniform = np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]
    uniform = np.broadcast_to(uniform, (3, 1, t, t))
    previous = np.zeros((3, 1, t, t))
    for i in range(t):
        previous[:, 0, i, max(i - 1, 0)] = 1.0
    maps = [np.concatenate([induction, uniform], axis=1),
            np.concatenate([previous, uniform], axis=1)]
    scores = prefix_matching_scores(model, idx, maps=maps)
    assert scores.shape == (2, 2)                  # the planted maps' layers and heads
    assert scores[0, 0] == 1.0
    assert scores[0, 1] == pytest.approx(np.mean(1 / np.arange(r + 1, t + 1)))
    assert scores[1, 0] == 0.0                    # a previous-token head never looks ahead


def test_token_and_copy_losses():
    model = GPT(tiny()).to(dtype=np.float64)
    idx = repeated_tokens(2, 5, V, np.random.default_rng(0))
    losses = token_losses(model, idx)
    with tl.no_grad():
        _, loss = model(idx[:, :-1], idx[:, 1:])
    assert losses.shape == (2, 9)
    assert losses.mean() == pytest.approx(loss.item(), rel=1e-10)
    planted = np.arange(18, dtype=np.float64).reshape(2, 9)
    out = copy_losses(model, idx, losses=planted)      # first: 0..3, second: 5..8
    assert out == {"first": pytest.approx(np.mean(planted[:, :4])),
                   "second": pytest.approx(np.mean(planted[:, 5:]))}


def test_icl_score_reads_the_positions_it_names():
    model = GPT(tiny(block_size=64))
    idx = _ids(2, 50)
    curve = np.linspace(3.0, 2.0, 49)
    out = icl_score(model, idx, losses=np.stack([curve, curve]), band=0.0)
    assert (out["position_early"], out["position_late"]) == (5, 45)
    assert out["loss_early"] == pytest.approx(curve[4])
    assert out["loss_late"] == pytest.approx(curve[44])
    assert out["score"] == pytest.approx(curve[44] - curve[4]) and out["score"] < 0
    banded = icl_score(model, idx, losses=np.stack([curve, curve]), band=0.04)
    assert banded["loss_early"] == pytest.approx(curve[2:7].mean())
    with pytest.raises(ValueError, match="early=0.9, late=0.1"):
        icl_score(model, idx, early=0.9, late=0.1)
    real = icl_score(model, idx)
    assert real["per_position"].shape == (49,) and np.isfinite(real["score"])


def test_repeated_tokens():
    rng = np.random.default_rng(0)
    idx = repeated_tokens(4, 6, 20, rng, low=10)
    assert idx.shape == (4, 12) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx[:, :6], idx[:, 6:])
    assert idx.min() >= 10 and idx.max() < 20
    assert all(len(set(row[:6])) == 6 for row in idx)          # distinct within a copy
    long = repeated_tokens(2, 30, 20, rng)                    # more than the range: repeats
    np.testing.assert_array_equal(long[:, :30], long[:, 30:])
    with pytest.raises(ValueError, match="length must be >= 2"):
        repeated_tokens(1, 1, 20, rng)
