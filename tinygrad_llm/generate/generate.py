"""Autoregressive sampling: feed the last block_size tokens, take the last position's logits,
pick the next token (greedy, or temperature + top-k sampling), append, repeat.

This version recomputes the whole context each step: simple and always correct, and the
reference that the KV-cached decoder is tested against.
"""
import numpy as np

from .. import backend
from ..tensor import no_grad

__all__ = ["generate"]


def _sample(logits, temperature, top_k, rng):
    """logits: (B, V) float64 -> (B,) ids."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    u = rng.random((p.shape[0], 1))
    return np.minimum((p.cumsum(axis=-1) < u).sum(axis=-1), p.shape[-1] - 1)


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, seed=0):
    """idx: (B, T) int array -> (B, T + max_new_tokens). temperature=0 is greedy."""
    if temperature < 0:
        raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
    idx = np.asarray(backend.to_numpy(getattr(idx, "data", idx)), dtype=np.int64)
    if idx.ndim == 1:
        idx = idx[None]
    rng = np.random.default_rng(seed)
    block = model.config.block_size
    was_training = model.training
    model.eval()
    with no_grad():
        for _ in range(max_new_tokens):
            context = idx[:, -block:]
            logits = model(backend.to_device(context, model.device))
            last = backend.to_numpy(logits.data[:, -1]).astype(np.float64)
            nxt = _sample(last, temperature, top_k, rng)
            idx = np.concatenate([idx, nxt[:, None]], axis=1)
    model.train(was_training)
    return idx
