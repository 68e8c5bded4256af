"""Loss of a long text streamed through a model: what each token costs in nats when the model sees
it the way a decoder does, through its KV caches, or the slow way, by recomputing a window.

StreamingLLM (Xiao et al., 2023) compares four ways to read a text longer than the training
length: dense attention over everything (positions past the training length), a window of the
most recent keys (which collapses once the first tokens leave it), the same window plus the first
few tokens kept as "attention sinks" (which does not), and a sliding window with recomputation:
every token predicted by a fresh forward over the last W tokens, at positions 0..W-1, which is
always in distribution and costs W times more. The first three are cache implementations
(make_caches' `implementation`: "dense", "window", "sinks", and the compressed ones), measured by
`stream_nll`; the last is `recompute_nll`.

    nll[i] = -log p(ids[i + 1] | what the model holds after ids[0..i])          nll: (N - 1,)

Reading order: the argument checks, stream_nll, recompute_nll.
"""
import numbers

import numpy as np

from .. import backend
from ..ops.softmax import cross_entropy_forward
from .decode_step import forward_logits, inference
from .generate import sequence_ids
from .kv_cache import make_caches

__all__ = ["stream_nll", "recompute_nll"]


def _positive_int(name, arg, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: {arg} must be an int >= 1, got {value!r}")
    return int(value)


def stream_nll(model, ids, cache_implementation=None, cache_config=None, chunk=1, caches=None):
    """Negative log-likelihood (nats) of ids[1:], ids fed through the model's KV caches `chunk`
    tokens at a time, under no_grad and in eval mode.

    ids: (N,) ints, N >= 2. cache_implementation, cache_config: make_caches' `implementation`
    and its arguments (None: the dense cache; "window", "sinks", "quantized", "h2o"), e.g.
    ("sinks", {"n_sink": 4, "window": 123}). chunk: tokens per forward, at most the caches'
    prefill_chunk (a sinks cache feeds only as many as keep the last query within the model's
    positions); 1 is token-by-token decoding, exactly what generation sees, and chunk >= N - 1
    one prefill (for the dense cache, the full forward's loss). caches: a fresh CacheList from
    make_caches to stream into instead (then the two cache arguments stay None); it holds the
    stream afterwards, so its nbytes and contents can be read. Positions past the model's
    max_positions raise unless the caches assign positions themselves (sinks, window).
    Returns a float64 NumPy array (N - 1,); the logits come back once per chunk, as the (t,)
    losses of its targets (log-softmax and the gather run on the model's device)."""
    name = "stream_nll"
    ids = sequence_ids(name, ids, model.config.vocab_size, 2, "one to feed, one to predict")
    chunk = _positive_int(name, "chunk", chunk)
    n = len(ids) - 1                                        # tokens fed, each predicting the next
    if caches is None:
        config = dict(cache_config or {})
        caches = (make_caches(model, 1, n) if cache_implementation is None and not config
                  else make_caches(model, 1, n, implementation=cache_implementation, **config))
    elif cache_implementation is not None or cache_config is not None:
        raise ValueError(f"{name}: give either caches or cache_implementation/cache_config, got "
                         f"caches and {cache_implementation!r}/{cache_config!r}")
    elif any(c is not None and c.length for c in caches):
        raise ValueError(f"{name}: caches must be empty (fresh from make_caches), got lengths "
                         f"{[None if c is None else c.length for c in caches]}")
    # make_caches' CacheList says how its caches number positions and how many tokens one
    # forward may feed them; a plain list of caches is read as dense ones (true positions, any)
    if n > model.config.max_positions and not getattr(caches, "positions_in_cache", False):
        raise ValueError(f"{name}: {n} positions to feed exceed the model's max_positions="
                         f"{model.config.max_positions}; stream with cache_implementation="
                         f"\"sinks\" or \"window\" (positions assigned inside the cache), "
                         f"set RoPE scaling, or use a model with a longer block_size")
    chunk = min(chunk, getattr(caches, "prefill_chunk", None) or chunk)
    targets = backend.to_device(ids[1:], model.device)
    nll = np.empty(n, dtype=np.float64)
    with inference(model):
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            logits = forward_logits(model, ids[start:stop], caches, start)          # (t, V)
            loss = cross_entropy_forward(logits, targets[start:stop], -100, 0.0)[0]  # (t,)
            nll[start:stop] = backend.to_numpy(loss)
    return nll


def recompute_nll(model, ids, window, batch_size=32):
    """Negative log-likelihood (nats) of ids[1:], each token predicted by a fresh forward over
    (at most) the `window` tokens before it, at positions 0..window-1: StreamingLLM's "sliding
    window with re-computation", the faithful reference for a window cache at O(window) times
    its cost. No cache; under no_grad and in eval mode.

    ids: (N,) ints, N >= 2. window: W >= 1 (W >= N - 1 is one full forward). The first W
    targets come from one forward over ids[:W] (their contexts are prefixes, shorter than W);
    target i > W from the forward over ids[i - W:i], batch_size windows per forward.
    Returns a float64 NumPy array (N - 1,)."""
    name = "recompute_nll"
    ids = sequence_ids(name, ids, model.config.vocab_size, 2, "one to feed, one to predict")
    window = _positive_int(name, "window", window)
    batch_size = _positive_int(name, "batch_size", batch_size)
    n = len(ids) - 1
    w = min(window, n)
    if w > model.config.max_positions:
        raise ValueError(f"{name}: window={window} exceeds the model's max_positions="
                         f"{model.config.max_positions}; recompute over at most that many "
                         f"tokens")
    device = model.device
    nll = np.empty(n, dtype=np.float64)
    with inference(model):
        logits = model(backend.to_device(ids[None, :w], device)).data[0]          # (W, V)
        targets = backend.to_device(ids[1:w + 1], device)
        nll[:w] = backend.to_numpy(cross_entropy_forward(logits, targets, -100, 0.0)[0])
        # row s = ids[s:s + W] predicts ids[s + W], for s = 1 .. N - W (row 0 was the prefix)
        rows = np.lib.stride_tricks.sliding_window_view(ids[:-1], w)              # (N - W, W)
        for s in range(1, n - w + 1, batch_size):
            e = min(s + batch_size, n - w + 1)
            x = backend.to_device(np.ascontiguousarray(rows[s:e]), device)         # (B, W)
            last = model(x).data[:, -1]                                            # (B, V)
            targets = backend.to_device(ids[s + w:e + w], device)
            loss = cross_entropy_forward(last, targets, -100, 0.0)[0]
            nll[s + w - 1:e + w - 1] = backend.to_numpy(loss)
    return nll
