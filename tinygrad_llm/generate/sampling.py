"""Choosing the next token from the model's logits: penalties, then filters, then a draw.

All functions take (B, V) float64 NumPy logits (one row per sequence) and return new arrays.

Penalties (on the logits, using what each row has seen so far: its prompt and its output):
  repetition (Keskar et al., 2019, CTRL): a seen token's logit l becomes l / r if l > 0, l * r
      otherwise, so r > 1 always makes it less likely.
  frequency and presence (OpenAI's API): l -= frequency * count + presence * (count > 0).

Filters (tokens outside the kept set get -inf, i.e. probability 0; the rest renormalise):
  temperature T: l / T. T -> 0 approaches argmax; T = 0 is greedy decoding.
  top-k (Fan et al., 2018): keep the k largest logits.
  top-p, nucleus (Holtzman et al., 2020): keep the smallest set of most likely tokens whose
      probabilities sum to at least p.
  min-p (Nguyen et al., 2024): keep tokens with probability at least min_p times the largest.

Ties at a top-k or top-p boundary are kept (every token as likely as the last kept one), so the
result does not depend on the order of equal logits.
"""
import numpy as np

__all__ = ["SamplingConfig", "apply_penalties", "filter_logits", "probabilities", "sample",
           "next_tokens"]


class SamplingConfig:
    """The decoding settings, checked once: temperature (0 = greedy), top_k, top_p, min_p,
    repetition_penalty (1 = off), frequency_penalty and presence_penalty (0 = off)."""

    def __init__(self, temperature=1.0, top_k=None, top_p=None, min_p=None,
                 repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
        if min_p is not None and not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1] or None, got {min_p}")
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        self.temperature, self.top_k, self.top_p, self.min_p = temperature, top_k, top_p, min_p
        self.repetition_penalty = repetition_penalty
        self.frequency_penalty, self.presence_penalty = frequency_penalty, presence_penalty

    @property
    def greedy(self):
        return self.temperature == 0

    @property
    def penalised(self):
        return (self.repetition_penalty != 1 or self.frequency_penalty != 0
                or self.presence_penalty != 0)


def apply_penalties(logits, counts, repetition_penalty=1.0, frequency_penalty=0.0,
                    presence_penalty=0.0):
    """logits (B, V); counts (B, V): how often each row has seen each token."""
    out = np.array(logits, dtype=np.float64)
    seen = counts > 0
    if repetition_penalty != 1.0:
        out = np.where(seen, np.where(out > 0, out / repetition_penalty,
                                      out * repetition_penalty), out)
    if frequency_penalty or presence_penalty:
        out = out - frequency_penalty * counts - presence_penalty * seen
    return out


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """Temperature, then top-k, top-p and min-p; removed tokens get -inf. temperature must be
    > 0 here (greedy decoding takes the argmax instead)."""
    out = np.array(logits, dtype=np.float64) / temperature
    if top_k is not None and top_k < out.shape[-1]:
        kth = -np.partition(-out, top_k - 1, axis=-1)[:, top_k - 1:top_k]   # k-th largest
        out = np.where(out < kth, -np.inf, out)
    if top_p is not None and top_p < 1:
        p = probabilities(out)
        order = np.argsort(-p, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p          # mass of strictly likelier
        # keep a token when the likelier ones do not yet reach top_p; ties with the last kept
        # token are kept too
        keep_sorted = before < top_p
        last = np.where(keep_sorted, sorted_p, np.inf).min(axis=-1, keepdims=True)
        keep = p >= last
        out = np.where(keep, out, -np.inf)
    if min_p is not None and min_p > 0:
        p = probabilities(out)
        out = np.where(p >= min_p * p.max(axis=-1, keepdims=True), out, -np.inf)
    return out


def probabilities(logits):
    """softmax over the last axis (rows of -inf entries get probability 0)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def sample(p, rng):
    """One draw per row from probabilities p (B, V) by inverting the CDF."""
    u = rng.random((p.shape[0], 1))
    c = np.cumsum(p, axis=-1)
    return np.minimum((c < u * c[:, -1:]).sum(axis=-1), p.shape[-1] - 1)


def next_tokens(logits, config, rng, counts=None):
    """(B, V) logits -> ((B,) ids, (B, V) the distribution they were drawn from)."""
    logits = np.asarray(logits, dtype=np.float64)
    if config.penalised and counts is not None:
        logits = apply_penalties(logits, counts, config.repetition_penalty,
                                 config.frequency_penalty, config.presence_penalty)
    if config.greedy:
        ids = logits.argmax(axis=-1)
        p = np.zeros_like(logits)
        p[np.arange(len(ids)), ids] = 1.0
        return ids, p
    p = probabilities(filter_logits(logits, config.temperature, config.top_k, config.top_p,
                                    config.min_p))
    return sample(p, rng), p
