"""The bidirectional Encoder (models/encoder.py): shapes, attention in both directions, padding,
BERT's masking statistics, the MLM loss and its gradient, the classification head with both
poolings, a small classification task trained from scratch, and bad arguments.

Models are tiny (C = 16, 4 heads); `tiny_config(**overrides)` builds their configuration. The
training test writes Adam inline (Kingma & Ba, 2015) so it depends on nothing outside models/.
"""
import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.nn.functional as F
from tinygrad_llm.models.encoder import Encoder, mask_tokens
from tinygrad_llm.models.gpt import GPTConfig

V, T = 13, 8
MASK_ID = 12


def tiny_config(preset="gpt2", **overrides):
    base = dict(n_layer=2, n_head=4, n_embd=16, block_size=T, vocab_size=V)
    if preset == "llama":
        base["n_kv_head"] = 2
    return GPTConfig.preset(preset, **{**base, **overrides})


def _ids(B=2, T_=T, seed=0):
    return np.random.default_rng(seed).integers(0, V, (B, T_))


# x: (B, T) = (2, 8); row 0 has 5 real tokens, row 1 has 8
PAD = np.array([[True] * 5 + [False] * 3, [True] * 8])


# ---- shapes and directions -----------------------------------------------------------------
def test_shapes():
    enc = Encoder(tiny_config(), n_classes=3)
    idx = _ids(3, 6)
    h = enc(idx)
    assert h.shape == (3, 6, 16) and h.dtype == np.float32
    assert enc.mlm_logits(idx).shape == (3, 6, V)
    assert enc.classify(idx).shape == (3, 3)
    assert all(not b.attn.causal for b in enc.blocks)


@pytest.mark.parametrize("preset, overrides", [
    ("gpt2", {}), ("llama", {}), ("gpt2", dict(pos="t5", t5_num_buckets=8, t5_max_distance=16)),
    ("gpt2", dict(pos="sinusoidal")), ("llama", dict(kv_share=2)), ("gpt2", dict(prenorm=False)),
], ids=["gpt2", "llama", "t5", "sinusoidal", "kv_share", "post_ln"])
def test_bidirectional(preset, overrides):
    enc = Encoder(tiny_config(preset, **overrides)).to(dtype=np.float64)
    idx = _ids()
    base = enc(idx).numpy()
    changed = idx.copy()
    changed[:, -1] = (changed[:, -1] + 1) % V
    out = enc(changed).numpy()
    # every earlier position sees the change of the last token
    assert np.all(np.abs(out[:, :-1] - base[:, :-1]).max(axis=-1) > 1e-9)


def test_alibi_encoder_sees_the_order_of_later_tokens():
    enc = Encoder(tiny_config(pos="alibi", n_layer=1)).to(dtype=np.float64)
    idx = np.array([[1, 2, 3, 4, 5, 6, 7, 8]])
    reordered = np.array([[1, 8, 7, 6, 5, 4, 3, 2]])
    h0, h1 = enc(idx).numpy()[0, 0], enc(reordered).numpy()[0, 0]
    assert not np.allclose(h0, h1, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("preset, overrides", [
    ("gpt2", {}), ("llama", {}), ("gpt2", dict(pos="t5", t5_num_buckets=8, t5_max_distance=16)),
    ("gpt2", dict(pos="alibi")), ("llama", dict(kv_share=2, window=3)),
], ids=["gpt2", "llama", "t5", "alibi", "kv_share_window"])
def test_padding_does_not_leak_into_real_tokens(preset, overrides):
    enc = Encoder(tiny_config(preset, **overrides), n_classes=2, pooling="mean")
    enc.to(dtype=np.float64)
    idx = _ids()
    other = idx.copy()
    other[~PAD] = (other[~PAD] + 5) % V
    h, h2 = enc(idx, PAD).numpy(), enc(other, PAD).numpy()
    np.testing.assert_allclose(h2[PAD], h[PAD], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(enc.classify(other, PAD).numpy(), enc.classify(idx, PAD).numpy(),
                               rtol=1e-12, atol=1e-12)
    # without the mask the padded ids do reach the real tokens (the test can fail)
    assert not np.allclose(enc(other).numpy()[PAD], enc(idx).numpy()[PAD])


# ---- masking ------------------------------------------------------------------------------
def test_mask_tokens_statistics():
    V_big, special = 1000, (0, 1)
    rng = np.random.default_rng(0)
    idx = rng.integers(2, V_big, (400, 500))
    idx[:, 0] = 1                                  # [CLS]
    idx[:, -50:] = 0                               # padding
    original = idx.copy()
    inputs, labels = mask_tokens(idx, mask_token_id=999, vocab_size=V_big,
                                 rng=np.random.default_rng(1), special_ids=special)
    np.testing.assert_array_equal(idx, original)                  # not modified in place
    assert inputs.shape == labels.shape == idx.shape
    chosen = labels != -100
    # labels: the original id where chosen, -100 elsewhere; special ids are never chosen
    np.testing.assert_array_equal(labels[chosen], idx[chosen])
    assert not chosen[np.isin(idx, special)].any()
    np.testing.assert_array_equal(inputs[~chosen], idx[~chosen])
    eligible = ~np.isin(idx, special)
    frac = chosen.sum() / eligible.sum()
    assert abs(frac - 0.15) < 0.005, frac
    n = chosen.sum()
    masked = (inputs[chosen] == 999).mean()
    kept = (inputs[chosen] == idx[chosen]).mean()
    randomised = ((inputs[chosen] != 999) & (inputs[chosen] != idx[chosen])).mean()
    assert n > 20000
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(randomised - 0.1) < 0.01
    # random replacements are drawn from the whole vocabulary
    rand_ids = inputs[chosen & (inputs != 999) & (inputs != idx)]
    assert rand_ids.min() >= 0 and rand_ids.max() < V_big
    assert len(np.unique(rand_ids)) > 0.9 * V_big


def test_mask_tokens_probability_and_seed():
    idx = np.random.default_rng(0).integers(0, 50, (100, 100))
    a = mask_tokens(idx, 49, 50, p=0.5, rng=np.random.default_rng(3))
    b = mask_tokens(idx, 49, 50, p=0.5, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert abs((a[1] != -100).mean() - 0.5) < 0.02
    none_in, none_lab = mask_tokens(idx, 49, 50, p=0.0)
    assert np.all(none_lab == -100) and np.array_equal(none_in, idx)


# ---- MLM loss -----------------------------------------------------------------------------
def test_mlm_loss_finite_and_gradient_reaches_the_embeddings():
    enc = Encoder(tiny_config())
    idx = _ids(4, T, seed=1)
    inputs, labels = mask_tokens(idx, MASK_ID, V, p=0.3, rng=np.random.default_rng(0),
                                 special_ids=(0,))
    assert (labels != -100).any()
    loss = enc.mlm_loss(inputs, labels)
    assert loss.shape == () and np.isfinite(loss.item())
    # it is the cross-entropy of the MLM logits at the chosen positions only
    logits = enc.mlm_logits(inputs).numpy().astype(np.float64)
    chosen = labels != -100
    lp = logits[chosen] - logits[chosen].max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    want = -lp[np.arange(chosen.sum()), labels[chosen]].mean()
    assert abs(loss.item() - want) < 1e-5
    loss.backward()
    g = enc.tok_emb.weight.grad.numpy()
    # the tied decoder gives every row a gradient; the input rows also get the encoder's
    assert np.all(np.abs(g).sum(axis=1) > 0)
    assert np.abs(enc.mlm_bias.grad.numpy()).sum() > 0
    assert enc.blocks[0].attn.qkv.weight.grad is not None


def test_mlm_loss_gradcheck_directions():
    enc = Encoder(tiny_config("llama", n_layer=1)).to(dtype=np.float64)
    idx = _ids(2, 6, seed=2)
    inputs, labels = mask_tokens(idx, MASK_ID, V, p=0.5, rng=np.random.default_rng(0))
    params = dict(enc.named_parameters())
    chosen = [params[n] for n in ("tok_emb.weight", "blocks.0.attn.qkv.weight", "mlm_bias",
                                  "mlm_dense.weight", "blocks.0.ffn.gate.weight")]
    assert tl.gradcheck(lambda *_: enc.mlm_loss(inputs, labels, PAD[:, :6]), *chosen,
                        directions=4)


# ---- classification -------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classify_pooling(pooling):
    enc = Encoder(tiny_config(), n_classes=4, pooling=pooling).to(dtype=np.float64)
    idx = _ids()
    out = enc.classify(idx, PAD).numpy()
    assert out.shape == (2, 4)
    h = enc(idx, PAD).numpy()
    if pooling == "cls":
        pooled = h[:, 0]
    else:       # the mean over real tokens only
        pooled = np.stack([h[b][PAD[b]].mean(axis=0) for b in range(2)])
    dense = np.tanh(pooled @ enc.cls_dense.weight.numpy().T + enc.cls_dense.bias.numpy())
    want = dense @ enc.cls_head.weight.numpy().T + enc.cls_head.bias.numpy()
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    if pooling == "mean":     # without a mask: the mean over all positions
        pooled_all = enc(idx).numpy().mean(axis=1)
        dense = np.tanh(pooled_all @ enc.cls_dense.weight.numpy().T + enc.cls_dense.bias.numpy())
        np.testing.assert_allclose(enc.classify(idx).numpy(),
                                   dense @ enc.cls_head.weight.numpy().T
                                   + enc.cls_head.bias.numpy(), rtol=1e-10, atol=1e-12)


def _contains_3(rng, n):
    """(ids (n, T), labels (n,), padding mask (n, T)): label 1 iff a real token is 3. Position 0
    is [CLS] (id 1); padded positions hold 3s and 5s, which a leaking mask would misread."""
    x = rng.integers(4, 10, (n, T))
    x[:, 0] = 1
    y = rng.integers(0, 2, n)
    lengths = rng.integers(3, T + 1, n)
    for i in np.nonzero(y)[0]:
        x[i, rng.integers(1, lengths[i], 2)] = 3
    mask = np.arange(T)[None, :] < lengths[:, None]
    x[~mask] = rng.choice([3, 5], int((~mask).sum()))
    return x, y, mask


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classification_task_trains(pooling):
    tl.manual_seed(0)
    enc = Encoder(tiny_config(n_layer=1, n_head=2, vocab_size=10), n_classes=2, pooling=pooling)
    rng = np.random.default_rng(0)
    x_test, y_test, m_test = _contains_3(rng, 512)

    def accuracy():
        with tl.no_grad():
            return (enc.classify(x_test, m_test).numpy().argmax(-1) == y_test).mean()

    assert accuracy() < 0.75                      # not solved by the initialisation
    params = list(enc.parameters())
    m1 = [np.zeros_like(p.data) for p in params]
    m2 = [np.zeros_like(p.data) for p in params]
    lr, b1, b2 = 3e-3, 0.9, 0.999
    for step in range(1, 201):
        x, y, mask = _contains_3(rng, 32)
        enc.zero_grad()
        F.cross_entropy(enc.classify(x, mask), y).backward()
        for p, a, b in zip(params, m1, m2):
            if p.grad is None:      # the MLM head takes no part in classification
                continue
            g = p.grad.data
            a *= b1
            a += (1 - b1) * g
            b *= b2
            b += (1 - b2) * g * g
            p.data -= lr * (a / (1 - b1 ** step)) / (np.sqrt(b / (1 - b2 ** step)) + 1e-8)
    assert accuracy() > 0.9


# ---- bad arguments -------------------------------------------------------------------------
def test_classify_without_n_classes_raises():
    enc = Encoder(tiny_config())
    with pytest.raises(ValueError, match="n_classes"):
        enc.classify(_ids())


def test_bad_pooling_and_long_sequences():
    with pytest.raises(ValueError, match="pooling.*max"):
        Encoder(tiny_config(), n_classes=2, pooling="max")
    enc = Encoder(tiny_config())
    with pytest.raises(ValueError, match="block_size=8"):
        enc(np.zeros((1, 9), np.int64))
    with pytest.raises(ValueError, match="13"):
        enc(np.array([[1, 13]]))
