"""Autoregressive generation: run the prompt, pick a token from the last position's logits,
append it, repeat.

With `use_cache=True` (the default) the prompt is run once ("prefill") into per-layer KV caches
(kv_cache.py) and each later step feeds only the newest token: O(T) attention work per token
instead of re-running all T positions. `use_cache=False` recomputes the whole context every step:
slow, plainly correct, and the reference the cached decoder is tested against.

Batched prompts of different lengths are left-padded into one (B, T) array with a padding mask,
so every row's next token sits in the last column. Relative positions (RoPE, ALiBi, T5) need
nothing more; learned or sinusoidal tables get each row's own positions (its first real token is
position 0), so a row decodes exactly as it would alone.

Past the model's position limit (max_positions) there are three ways on, and generate raises
unless one is chosen: caches that assign positions themselves (cache_implementation "sinks" or
"window", long_caches.py), RoPE scaling (model.set_rope_scaling, which raises the limit), or
context_shift=True: the caches are rebuilt from the most recent half of the window and decoding
continues (as llama.cpp does). The other cache implementations ("quantized", "h2o") compress or
evict within the limit. A prompt longer than a bounded cache holds is fed in chunks
(the CacheList's prefill_chunk), so no query ever sees a position the model never trained on.

Token selection is sampling.py's: penalties, then temperature / top-k / top-p / min-p, then a
draw from a seeded Philox generator, all on the model's device; temperature 0 is greedy. Only the
sampled ids come back to the host: one (B,) read per step.
"""
import numpy as np

from .. import backend
from ..random import Generator
from ..tensor import array_of, no_grad
from .decode_step import forward_logits
from .kv_cache import make_caches
from .long_caches import LONG_IMPLEMENTATIONS, POSITIONS_IN_CACHE
from .sampling import SamplingConfig, next_ids

__all__ = ["generate", "stream", "prepare_prompts", "sequence_ids"]


def sequence_ids(owner, ids, vocab_size, min_tokens=1, why="give at least one token"):
    """One sequence of ids ((T,) or (1, T): an array, list or Tensor) as a 1-D host int array,
    checked: integers, at least min_tokens of them (`why` says what they are for), each in
    [0, vocab_size). A DecodeSession's feed and the streaming losses read their ids this way."""
    a = np.asarray(backend.to_numpy(array_of(ids)))
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise ValueError(f"{owner}: ids must be a 1-D (or (1, T)) sequence of ints, got shape "
                         f"{a.shape} dtype {a.dtype}")
    if len(a) < min_tokens:
        raise ValueError(f"{owner}: ids must hold at least {min_tokens} token"
                         f"{'s' if min_tokens > 1 else ''} ({why}), got {len(a)}"
                         + ("; it is empty" if len(a) == 0 else ""))
    if a.size and (a.min() < 0 or a.max() >= vocab_size):
        raise ValueError(f"{owner}: ids must be in [0, {vocab_size}), got values in "
                         f"[{a.min()}, {a.max()}]")
    return a.astype(np.int64)


def prepare_prompts(idx):
    """A (B, T) / (T,) int array, or a list of 1-D id sequences of any lengths -> list of 1-D
    int64 arrays, and whether the input was a rectangular array."""
    if hasattr(idx, "data") and not isinstance(idx, (np.ndarray, list, tuple)):
        idx = idx.data                                      # a Tensor
    if isinstance(idx, (list, tuple)) and idx and not np.isscalar(idx[0]):
        prompts = [np.asarray(backend.to_numpy(np.asarray(p)), dtype=np.int64).reshape(-1)
                   for p in idx]
        rectangular = False
    else:
        a = np.asarray(backend.to_numpy(idx))
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or (a.size and a.dtype.kind not in "iu"):
            raise ValueError(f"generate: idx must be (B, T) or (T,) integer ids or a list of id "
                             f"sequences, got shape {a.shape} dtype {a.dtype}")
        prompts, rectangular = [row.astype(np.int64) for row in a], True
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"generate: prompt {i} is empty; give at least one token (e.g. "
                             f"<|endoftext|> or a newline)")
    return prompts, rectangular


def check_cache_arguments(name, cache_implementation, cache_config):
    """The cache choice as (implementation, config dict), checked."""
    if cache_implementation not in (None, "dense") + LONG_IMPLEMENTATIONS:
        raise ValueError(f"{name}: cache_implementation must be None, 'dense' or one of "
                         f"{LONG_IMPLEMENTATIONS}, got {cache_implementation!r}")
    if cache_config is not None and not isinstance(cache_config, dict):
        raise TypeError(f"{name}: cache_config must be a dict of the implementation's arguments "
                        f"(e.g. {{'n_sink': 4, 'window': 252}}), got "
                        f"{type(cache_config).__name__}")
    return cache_implementation, dict(cache_config or {})


# what a ValueError past max_positions offers
PAST_LIMIT_OPTIONS = ("cache_implementation=\"sinks\" or \"window\" (positions assigned inside "
                      "the cache, StreamingLLM), rope_scaling (model.set_rope_scaling({'type': "
                      "'yarn', 'factor': f})), or context_shift=True (rebuild the caches from "
                      "the most recent half, as llama.cpp does)")


def past_limit_error(name, need, limit):
    return ValueError(f"{name}: {need} positions exceed the model's max_positions={limit}; to "
                      f"go past it use {PAST_LIMIT_OPTIONS}")


class _Context:
    """The rows being decoded: left-padded tokens, their padding mask, and (with a cache) the
    caches and how many columns they hold."""

    def __init__(self, model, prompts, max_new_tokens, use_cache, cache_implementation=None,
                 cache_config=None, context_shift=False):
        self.model, self.use_cache = model, use_cache
        self.implementation, self.cache_config = cache_implementation, cache_config or {}
        self.limit = model.config.max_positions
        self.absolute = model.pos_emb is not None
        width = max(len(p) for p in prompts)
        self.tokens = np.zeros((len(prompts), width), dtype=np.int64)
        self.mask = np.zeros((len(prompts), width), dtype=bool)
        for i, p in enumerate(prompts):
            self.tokens[i, width - len(p):] = p
            self.mask[i, width - len(p):] = True
        # sinks and window caches number the positions themselves: no limit, no shift
        self.unlimited = cache_implementation in POSITIONS_IN_CACHE
        need = width + max_new_tokens
        if max_new_tokens and need > self.limit and not (self.unlimited or context_shift):
            raise past_limit_error("generate", need, self.limit)
        if cache_implementation not in (None, "dense") and not use_cache:
            raise ValueError(f"generate: cache_implementation={cache_implementation!r} needs "
                             f"use_cache=True")
        self.max_len = need if self.unlimited else min(self.limit, need)
        self.window_start = 0            # the first column the model sees
        self.cached = 0                  # columns from window_start held by the caches
        self.caches = None

    def _forward(self, start, stop, offset):
        """(B, V) logits of the last column, on the model's device, for columns start..stop-1,
        the caches (if any) holding columns start - offset .. start - 1 of the current window."""
        tokens, mask = self.tokens[:, start:stop], self.mask[:, self.window_start:stop]
        if len(tokens) == 1:             # one row: no padding, positions offset..
            logits = forward_logits(self.model, tokens[0], self.caches, offset)
            return logits[-1:]
        positions = None
        if self.absolute:
            positions = (np.cumsum(mask, axis=1) - 1).clip(0)[:, -tokens.shape[1]:]
        padded = not mask.all()
        logits = self.model(backend.to_device(tokens, self.model.device),
                            padding_mask=mask if padded else None, caches=self.caches,
                            offset=offset, positions=positions)
        return logits.data[:, -1]

    def logits(self):
        """The next-token logits of every row, given all columns so far."""
        width = self.tokens.shape[1]
        if not self.use_cache:
            self.window_start = max(0, width - self.limit)
            return self._forward(self.window_start, width, 0)
        if self.caches is None or width - self.window_start > self.max_len:
            # prefill, or a context shift: rebuild from the most recent half of the window
            keep = min(width, self.max_len) if self.caches is None else max(1, self.limit // 2)
            self.window_start = width - keep
            self.caches = make_caches(self.model, len(self.tokens), self.max_len,
                                      implementation=self.implementation, **self.cache_config)
            self.cached = keep
            chunk = self.caches.prefill_chunk or keep       # a bounded cache: a chunk at a time
            for start in range(self.window_start, width, chunk):
                logits = self._forward(start, min(start + chunk, width), start - self.window_start)
            return logits
        held = self.window_start + self.cached           # the first column not yet cached
        offset, self.cached = self.cached, width - self.window_start
        return self._forward(held, width, offset)

    def append(self, ids):
        self.tokens = np.concatenate([self.tokens, ids[:, None]], axis=1)
        self.mask = np.concatenate([self.mask, np.ones((len(ids), 1), dtype=bool)], axis=1)


def _stop_ids(stop_ids):
    if stop_ids is None:
        return set()
    if np.isscalar(stop_ids):
        return {int(stop_ids)}
    return {int(s) for s in stop_ids}


def stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, min_p=None,
           repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0, stop_ids=None,
           stop_strings=None, tokenizer=None, seed=0, use_cache=True, cache_implementation=None,
           cache_config=None, context_shift=False):
    """Yield the new tokens as they are made: a (B,) int64 array per step, -1 in rows that have
    already stopped. Stops after max_new_tokens steps or when every row has stopped (it emitted
    one of stop_ids, or its decoded output ends a stop string; stop_strings need `tokenizer`).
    The arguments are generate's."""
    config = SamplingConfig(temperature, top_k, top_p, min_p, repetition_penalty,
                            frequency_penalty, presence_penalty)
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens \
            or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be a non-negative int, got "
                         f"{max_new_tokens!r}")
    if stop_strings and tokenizer is None:
        raise ValueError("generate: stop_strings need a tokenizer to decode the output")
    stop_strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings or [])
    stops = _stop_ids(stop_ids)
    cache_implementation, cache_config = check_cache_arguments("generate", cache_implementation,
                                                               cache_config)
    prompts, _ = prepare_prompts(idx)
    generator = Generator(model.device, seed)
    ctx = _Context(model, prompts, max_new_tokens, use_cache, cache_implementation, cache_config,
                   context_shift)
    vocab = model.config.vocab_size
    counts = rows = None
    if config.penalised:             # (B, V) on the device, updated there with each step's ids
        counts = np.zeros((len(prompts), vocab), dtype=np.float32)
        for i, p in enumerate(prompts):
            np.add.at(counts[i], p[p < vocab], 1)
        counts = backend.to_device(counts, model.device)
        rows = backend.xp_for(model.device).arange(len(prompts))
    done = np.zeros(len(prompts), dtype=bool)
    outputs = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for _ in range(int(max_new_tokens)):
                ids = next_ids(ctx.logits(), config, generator, counts)
                if counts is not None:       # stopped rows too: their output is no longer read
                    counts[rows, ids] += 1
                ids = np.where(done, -1, backend.to_numpy(ids))   # the step's one read
                yield ids.copy()
                for i in np.flatnonzero(~done):
                    outputs[i].append(int(ids[i]))
                    if int(ids[i]) in stops or (stop_strings and any(
                            tokenizer.decode(outputs[i]).endswith(s) for s in stop_strings)):
                        done[i] = True
                if done.all():
                    return
                # a stopped row keeps decoding its last token (its output is no longer read)
                ctx.append(np.where(ids < 0, ctx.tokens[:, -1], ids))
    finally:
        model.train(was_training)


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, min_p=None,
             repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0, stop_ids=None,
             stop_strings=None, tokenizer=None, seed=0, use_cache=True, cache_implementation=None,
             cache_config=None, context_shift=False):
    """Continue each prompt by up to max_new_tokens tokens.

    idx: (B, T) or (T,) int ids, or a list of id sequences of different lengths.
    Returns, for an array, a (B, T + n) int64 array (n = steps taken; a row that stopped early is
    padded on the right with its last token); for a list, a list of 1-D arrays, each its prompt
    and its own new tokens (through the stop token). temperature=0 is greedy; see sampling.py for
    top_k, top_p, min_p and the penalties. No autograd graph is recorded.
    cache_implementation: None / "dense" (every key), "sinks", "window", "quantized" or "h2o"
    (long_caches.py), configured by cache_config, e.g. {"n_sink": 4, "window": 252} (any of them
    also takes "prefill_chunk"). context_shift: past max_positions, rebuild the caches from the
    most recent half of the window instead of raising (a ValueError that names the options)."""
    prompts, rectangular = prepare_prompts(idx)
    new = [[] for _ in prompts]
    for ids in stream(model, idx, max_new_tokens, temperature, top_k, top_p, min_p,
                      repetition_penalty, frequency_penalty, presence_penalty, stop_ids,
                      stop_strings, tokenizer, seed, use_cache, cache_implementation,
                      cache_config, context_shift):
        for i, t in enumerate(ids.tolist()):
            if t >= 0:
                new[i].append(t)
    rows = [np.concatenate([p, np.asarray(n, dtype=np.int64)]) for p, n in zip(prompts, new)]
    if not rectangular:
        return rows
    width = max(len(r) for r in rows)
    return np.stack([np.concatenate([r, np.full(width - len(r), r[-1], dtype=np.int64)])
                     for r in rows])
