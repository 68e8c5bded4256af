"""KV caches: cached decoding gives the logits of recomputing the whole sequence, for every preset
and attention variant; sliding-window rings, shared K/V, linear-attention state; reorder,
truncate; the int8 cache's memory and error."""
import numpy as np
import pytest

from tinygrad_llm import no_grad
from tinygrad_llm.generate import KVCache, LinearAttentionState, cache_nbytes, make_caches
from tinygrad_llm.models import GPT, GPTConfig

V, T = 23, 20


def model_for(preset, **overrides):
    base = dict(vocab_size=V, n_layer=2, n_head=4, n_embd=16, block_size=32)
    return GPT(GPTConfig.preset(preset, **{**base, **overrides})).to(dtype=np.float64).eval()


VARIANTS = [
    ("gpt2", "gpt2", {}),
    ("llama_gqa", "llama", dict(n_kv_head=2)),
    ("mqa", "llama", dict(n_kv_head=1)),
    ("sinusoidal", "gpt2", dict(pos="sinusoidal")),
    ("rope_gpt2", "gpt2", dict(pos="rope")),
    ("alibi", "gpt2", dict(pos="alibi")),
    ("t5", "gpt2", dict(pos="t5", t5_num_buckets=8, t5_max_distance=16)),
    ("no_positions", "gpt2", dict(pos="none")),
    ("window_3", "llama", dict(window=3)),
    ("window_5_alibi", "gpt2", dict(window=5, pos="alibi")),
    ("kv_share_2", "llama", dict(kv_share=2, n_layer=4)),
    ("moe", "llama", dict(n_expert=4, n_expert_per_token=2)),
    ("linear_attention", "gpt2", dict(attention="linear")),
    ("linear_attention_gqa", "llama", dict(attention="linear", n_kv_head=2)),
    ("post_ln", "gpt2", dict(prenorm=False)),
]


def decode_in_pieces(model, idx, pieces, **cache_kw):
    """Logits of idx fed through caches in the given piece lengths."""
    caches = make_caches(model, idx.shape[0], idx.shape[1], **cache_kw)
    out, start = [], 0
    with no_grad():
        for n in pieces:
            out.append(model(idx[:, start:start + n], caches=caches, offset=start).numpy())
            start += n
    return np.concatenate(out, axis=1), caches


@pytest.mark.parametrize("name, preset, overrides", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_cached_logits_equal_full_recompute(name, preset, overrides):
    model = model_for(preset, **overrides)
    idx = np.random.default_rng(1).integers(0, V, (2, T))
    with no_grad():
        full = model(idx).numpy()
    # prefill 7, single steps, a 3-token step (speculative verification), single steps
    pieces = [7] + [1] * 5 + [3] + [1] * 5
    cached, caches = decode_in_pieces(model, idx, pieces)
    np.testing.assert_allclose(cached, full, rtol=0, atol=1e-10, err_msg=name)
    live = [c for c in caches if c is not None]
    assert all(c.length == T for c in live)


def test_gqa_cache_stores_only_kv_heads():
    model = model_for("llama", n_kv_head=2)
    (cache, _) = make_caches(model, 3, 10)
    assert cache.k.shape == (3, 2, 10, model.config.head_dim)


def test_window_cache_is_a_ring_of_bounded_size():
    model = model_for("llama", window=3)
    caches = make_caches(model, 1, 1000, slack=4)
    assert caches[0].k.shape[2] == 3 - 1 + 4            # W - 1 + slack, whatever max_len is
    idx = np.random.default_rng(2).integers(0, V, (1, 30))
    model_long = model_for("llama", window=3, block_size=64)
    model_long.load_state_dict(model.state_dict())
    with no_grad():
        full = model_long(idx).numpy()
    cached, _ = decode_in_pieces(model_long, idx, [4] + [1] * 26, slack=4)
    np.testing.assert_allclose(cached, full, rtol=0, atol=1e-10)


def test_shared_kv_layers_get_no_cache_and_linear_layers_a_state():
    caches = make_caches(model_for("llama", kv_share=2, n_layer=4), 1, 8)
    assert [type(c).__name__ for c in caches] == ["KVCache", "NoneType", "KVCache", "NoneType"]
    state = make_caches(model_for("gpt2", attention="linear"), 1, 8)[0]
    assert isinstance(state, LinearAttentionState)
    idx = np.random.default_rng(3).integers(0, V, (1, 12))
    model = model_for("gpt2", attention="linear")
    _, caches = decode_in_pieces(model, idx, [4, 1, 1])
    nbytes = caches[0].nbytes
    _, caches = decode_in_pieces(model, idx, [4] + [1] * 8)
    assert caches[0].nbytes == nbytes                     # constant memory, whatever the length


def test_reorder_and_truncate():
    model = model_for("llama")
    idx = np.random.default_rng(4).integers(0, V, (2, 10))
    caches = make_caches(model, 2, 10)
    with no_grad():
        model(idx[:, :6], caches=caches, offset=0)
        for c in caches:
            c.reorder([1, 1])                              # both rows now continue row 1
        out = model(idx[[1, 1], 6:7], caches=caches, offset=6).numpy()
        full = model(idx[[1], :7]).numpy()
    np.testing.assert_allclose(out[0, -1], full[0, -1], atol=1e-10)
    np.testing.assert_allclose(out[1, -1], full[0, -1], atol=1e-10)
    for c in caches:
        c.truncate(4)                                      # drop positions 4..6
    with no_grad():
        again = model(idx[[1, 1], 4:5], caches=caches, offset=4).numpy()
        want = model(idx[[1], :5]).numpy()
    np.testing.assert_allclose(again[0, -1], want[0, -1], atol=1e-10)
    with pytest.raises(ValueError, match="truncate: length must be in"):
        caches[0].truncate(99)


def test_cache_overflow_is_a_clear_error():
    cache = KVCache(1, 1, 4, max_len=3)
    k = np.zeros((1, 1, 2, 4))
    cache.update(k, k)
    with pytest.raises(ValueError, match="2 \\+ 2 tokens exceed max_len=3"):
        cache.update(k, k)


def test_int8_cache_saves_memory_with_small_logit_error():
    model = GPT(GPTConfig.preset("llama", vocab_size=V, n_layer=2, n_head=4, n_embd=32,
                                 block_size=32)).eval()
    idx = np.random.default_rng(5).integers(0, V, (2, T))
    with no_grad():
        full = model(idx).numpy()
    cached, caches = decode_in_pieces(model, idx, [5] + [1] * 15, dtype="int8")
    float_caches = make_caches(model, 2, T)
    d = model.config.head_dim             # int8 values plus one float32 scale per head vector
    assert cache_nbytes(caches) / cache_nbytes(float_caches) == pytest.approx((d + 4) / (4 * d))
    err = np.abs(cached - full).max()
    assert 0 < err < 0.05 * np.abs(full).max()
