"""stream_nll and recompute_nll (generate/streaming.py): the dense stream equals one full forward's
per-token cross-entropy, whatever the chunk (one prefill, token by token through the fused decode
step, or uneven chunks through the model's forward); recomputation equals a brute-force loop of
fresh forwards and, with a window covering the text, the full forward; with one layer a window or
sinks cache is exactly recomputation over the tokens it keeps (the check that the cache
implementations and stream_nll agree on what a token sees); eval mode and no_grad; the device
stand-in (one read per chunk); bad input naming its argument."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import no_grad
from tinygrad_llm.generate import kv_cache
from tinygrad_llm.generate.decode_step import DecodePlan
from tinygrad_llm.generate.kv_cache import make_caches
from tinygrad_llm.generate.streaming import recompute_nll, stream_nll
from tinygrad_llm.models import GPT, GPTConfig

V = 23


def tiny(preset="llama", dtype=np.float64, **overrides):
    base = dict(vocab_size=V, n_layer=2, n_head=4, n_embd=16, block_size=40, pos="rope")
    return GPT(GPTConfig.preset(preset, **{**base, **overrides})).to(dtype=dtype).eval()


def text(n, seed=0):
    return np.random.default_rng(seed).integers(0, V, n)


def log_softmax_nll(logits, targets):
    """The oracle: -log softmax(logits)[target] in float64 NumPy, logits (N, V)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return lse - z[np.arange(len(targets)), targets]


def full_forward_nll(model, ids):
    with no_grad():
        logits = model(ids[None, :-1]).data[0]
    return log_softmax_nll(logits, ids[1:])


def brute_force_recompute(model, ids, window):
    """One forward per target over its last `window` tokens (no batching, no prefix trick)."""
    out = []
    with no_grad():
        for i in range(1, len(ids)):
            ctx = ids[max(0, i - window):i]
            out.append(log_softmax_nll(model(ctx[None]).data[0, -1:], ids[i:i + 1])[0])
    return np.array(out)


# ---- the dense stream --------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 3, 7, 16, 17, 39, 1000])
@pytest.mark.parametrize("preset", ["llama", "gpt2"])
def test_dense_stream_equals_the_full_forward(preset, chunk):
    # chunk 1 and <= 16 take the fused decode step, longer ones the model's forward with caches
    model = tiny(preset)
    ids = text(40)
    got = stream_nll(model, ids, chunk=chunk)
    assert got.dtype == np.float64 and got.shape == (39,)
    np.testing.assert_allclose(got, full_forward_nll(model, ids), rtol=1e-10, atol=1e-10)


def test_dense_stream_without_the_decode_plan(monkeypatch):
    # the model's forward with KV caches, token by token (models the fused step cannot run)
    monkeypatch.setattr(DecodePlan, "reason", staticmethod(lambda model: "refused"))
    model = tiny()
    ids = text(30, seed=2)
    np.testing.assert_allclose(stream_nll(model, ids, chunk=1), full_forward_nll(model, ids),
                               rtol=1e-10, atol=1e-10)


def test_float32_stream_matches_the_full_forward_to_float_tolerance():
    model = tiny(dtype=np.float32)
    ids = text(40, seed=3)
    want = full_forward_nll(model, ids)
    np.testing.assert_allclose(stream_nll(model, ids, chunk=1), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stream_nll(model, ids, chunk=39), want, rtol=1e-4, atol=1e-5)
    # and the mean is the model's own loss
    with no_grad():
        _, loss = model(ids[None, :-1], ids[None, 1:])
    assert abs(stream_nll(model, ids, chunk=5).mean() - loss.item()) < 1e-5


def test_the_stream_sees_the_text_in_order():
    # a shuffled continuation changes only the losses from the shuffle on
    model = tiny()
    ids = text(30, seed=4)
    other = ids.copy()
    other[20:] = other[20:][::-1]
    a, b = stream_nll(model, ids, chunk=4), stream_nll(model, other, chunk=4)
    np.testing.assert_allclose(a[:19], b[:19], rtol=1e-12)
    assert not np.allclose(a[19:], b[19:])


def test_caches_given_hold_the_stream_afterwards():
    model = tiny()
    ids = text(25)
    caches = make_caches(model, 1, 24)
    got = stream_nll(model, ids, chunk=1, caches=caches)
    np.testing.assert_allclose(got, full_forward_nll(model, ids), rtol=1e-10, atol=1e-10)
    assert all(c.length == 24 for c in caches)
    assert kv_cache.cache_nbytes(caches) > 0


def test_eval_mode_and_no_graph():
    # dropout 0.5 in training mode: the stream runs in eval mode, and the mode comes back
    model = tiny(dropout=0.5).train()
    ids = text(20)
    got = stream_nll(model, ids, chunk=2)
    assert model.training
    model.eval()
    np.testing.assert_allclose(got, full_forward_nll(model, ids), rtol=1e-10, atol=1e-10)
    assert all(p.grad is None for p in model.parameters())


def test_dense_past_the_model_positions_raises():
    model = tiny(block_size=16)
    with pytest.raises(ValueError, match="29 positions to feed exceed .*max_positions=16.*sinks"):
        stream_nll(model, text(30), chunk=1)


# ---- recomputation ---------------------------------------------------------------------------
@pytest.mark.parametrize("window", [39, 40, 100])
def test_recompute_with_a_window_covering_the_text_is_the_full_forward(window):
    model = tiny()
    ids = text(40, seed=5)
    np.testing.assert_allclose(recompute_nll(model, ids, window), full_forward_nll(model, ids),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("window, batch_size", [(1, 32), (5, 1), (5, 4), (8, 32), (12, 7)])
def test_recompute_equals_one_fresh_forward_per_token(window, batch_size):
    model = tiny()
    ids = text(33, seed=6)
    got = recompute_nll(model, ids, window, batch_size=batch_size)
    np.testing.assert_allclose(got, brute_force_recompute(model, ids, window), rtol=1e-10,
                               atol=1e-10)


def test_recompute_runs_past_the_model_positions():
    # every forward is at positions 0..window-1, so the text may be any length
    model = tiny(block_size=16)
    ids = text(50, seed=7)
    got = recompute_nll(model, ids, 16, batch_size=8)
    np.testing.assert_allclose(got, brute_force_recompute(model, ids, 16), rtol=1e-10,
                               atol=1e-10)
    # and differs from a shorter window's
    assert not np.allclose(got, recompute_nll(model, ids, 4))


# ---- cache implementations: with one layer, a cache is recomputation over what it keeps ----------
def _long_caches():
    return pytest.importorskip("tinygrad_llm.generate.long_caches")


def kept_forward_nll(model, ids, n_sink, window):
    """Each target predicted by a fresh forward over the first n_sink tokens, the `window` most
    recent before the query, and the query, at positions 0.. : what a one-layer model sees
    through a sinks cache whose keys are stored before RoPE."""
    out = []
    with no_grad():
        for i in range(1, len(ids)):
            seen = np.arange(i)                       # positions fed so far; the query is i - 1
            keep = seen if i <= n_sink + window + 1 else np.concatenate(
                [seen[:n_sink], seen[i - window - 1:]])
            out.append(log_softmax_nll(model(ids[keep][None]).data[0, -1:], ids[i:i + 1])[0])
    return np.array(out)


@pytest.mark.parametrize("n_sink, window", [(0, 6), (4, 6), (2, 9), (1, 22)])
@pytest.mark.parametrize("chunk", [1, 5])
def test_sinks_and_window_caches_equal_recomputation_over_the_kept_tokens(n_sink, window, chunk):
    # chunk 5 is cut to the caches' prefill_chunk (what keeps the last query within 24 slots);
    # below it a chunk's early queries see fewer recent keys than window, so only chunk 1 and
    # the n_sink + window = 23 case (prefill_chunk 1) equal the token-by-token reference
    _long_caches()
    model = tiny(n_layer=1, block_size=24)
    ids = text(45, seed=8)                       # past block_size: positions come from the cache
    implementation, config = (("window", {"window": window}) if n_sink == 0 else
                              ("sinks", {"n_sink": n_sink, "window": window}))
    got = stream_nll(model, ids, implementation, config, chunk=chunk)
    want = kept_forward_nll(model, ids, n_sink, window)
    if chunk == 1 or n_sink + window == 23:
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
        if n_sink == 0:                          # a plain window is recomputation over it
            np.testing.assert_allclose(got, recompute_nll(model, ids, window + 1), rtol=1e-9,
                                       atol=1e-9)
    else:                                        # within the first window, no eviction yet
        np.testing.assert_allclose(got[:n_sink + window], want[:n_sink + window], rtol=1e-9,
                                   atol=1e-9)
        assert np.isfinite(got).all()


def test_a_sinks_cache_holds_a_fixed_number_of_tokens():
    _long_caches()
    model = tiny(block_size=24)
    ids = text(80, seed=9)
    sizes = []
    for n in (30, 80):
        caches = make_caches(model, 1, n, implementation="sinks", n_sink=4, window=12)
        assert caches.positions_in_cache
        nll = stream_nll(model, ids[:n], chunk=1, caches=caches)
        assert np.isfinite(nll).all()
        sizes.append(kv_cache.cache_nbytes(caches))
    assert sizes[0] == sizes[1]


# ---- on the device stand-in ------------------------------------------------------------------
def test_on_the_device_one_read_per_chunk(standin_cuda):
    cpu = tiny(dtype=np.float32)
    ids = text(33, seed=10)
    want_stream, want_recompute = stream_nll(cpu, ids, chunk=4), recompute_nll(cpu, ids, 8, 8)
    model = tiny(dtype=np.float32)
    model.load_state_dict(cpu.state_dict())
    model = model.to("cuda")
    with tl.use_kernels(False):
        stream_nll(model, ids[:6], chunk=4)                 # warm up
        with standin_cuda.measure() as c:
            got = stream_nll(model, ids, chunk=4)
        assert c.syncs <= 8 and c.upcasts == 0, (c.sync_sites, c.upcast_sites)   # 8 chunks
        with standin_cuda.measure() as c:
            rec = recompute_nll(model, ids, 8, batch_size=8)
        assert c.syncs <= 1 + 4, c.sync_sites              # the prefix, then 25 rows / 8
    np.testing.assert_allclose(got, want_stream, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rec, want_recompute, rtol=1e-4, atol=1e-5)


# ---- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda m: stream_nll(m, [3]), "ids must hold at least 2"),
    (lambda m: stream_nll(m, []), "ids must hold at least 2"),
    (lambda m: stream_nll(m, np.zeros((2, 5), dtype=np.int64)), "ids must be a 1-D"),
    (lambda m: stream_nll(m, np.array([0.5, 1.5])), "ids must be a 1-D"),
    (lambda m: stream_nll(m, [1, V]), r"ids must be in \[0, 23\)"),
    (lambda m: stream_nll(m, [1, 2, 3], chunk=0), "chunk must be an int >= 1, got 0"),
    (lambda m: stream_nll(m, [1, 2, 3], chunk=-2), "chunk must be an int >= 1, got -2"),
    (lambda m: stream_nll(m, [1, 2, 3], chunk=1.5), "chunk must be an int >= 1, got 1.5"),
    (lambda m: stream_nll(m, [1, 2, 3], chunk=True), "chunk must be an int >= 1, got True"),
    (lambda m: stream_nll(m, [1, 2, 3], "sinks", caches=make_caches(m, 1, 2)),
     "either caches or cache_implementation"),
    (lambda m: recompute_nll(m, [4], 3), "recompute_nll: ids must hold at least 2"),
    (lambda m: recompute_nll(m, [1, 2, 3], 0), "window must be an int >= 1, got 0"),
    (lambda m: recompute_nll(m, [1, 2, 3], -1), "window must be an int >= 1, got -1"),
    (lambda m: recompute_nll(m, [1, 2, 3], None), "window must be an int >= 1, got None"),
    (lambda m: recompute_nll(m, [1, 2, 3], 2, batch_size=0), "batch_size must be an int >= 1"),
    (lambda m: recompute_nll(m, text(60), 50), "window=50 exceeds the model's max_positions=40"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny())


def test_used_caches_are_refused():
    model = tiny()
    caches = make_caches(model, 1, 10)
    stream_nll(model, text(5), caches=caches)
    with pytest.raises(ValueError, match="caches must be empty"):
        stream_nll(model, text(5), caches=caches)
