"""Choosing the next token from the model's logits: penalties, then filters, then a draw.

All functions take (B, V) logits (one row per sequence) on either device and return new arrays
on the same device, computed in the logits' dtype (float16 is widened to float32): the draw is an
inverse CDF (a cumulative sum and a comparison) against a uniform from a Philox generator
(tinygrad_llm.random), so on a GPU only the sampled ids need to come back to the host, and the
same seed draws the same uniforms on the CPU and the GPU.

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

from ..backend import array_module

__all__ = ["SamplingConfig", "apply_penalties", "filter_logits", "probabilities", "sample",
           "distribution", "pick", "next_tokens", "next_ids"]


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
        # Python numbers: a NumPy float64 setting would turn float32 logits into float64
        self.temperature = float(temperature)
        self.top_k = None if top_k is None else int(top_k)
        self.top_p = None if top_p is None else float(top_p)
        self.min_p = None if min_p is None else float(min_p)
        self.repetition_penalty = float(repetition_penalty)
        self.frequency_penalty = float(frequency_penalty)
        self.presence_penalty = float(presence_penalty)

    @property
    def greedy(self):
        return self.temperature == 0

    @property
    def penalised(self):
        return (self.repetition_penalty != 1 or self.frequency_penalty != 0
                or self.presence_penalty != 0)


def _float(logits):
    """Logits as a float32 or float64 array (the sampling dtypes)."""
    if isinstance(logits, (list, tuple)):            # rows as Python lists
        logits = np.asarray(logits, dtype=np.float64)
    xp = array_module(logits)
    if logits.dtype not in (np.float32, np.float64):
        return xp.asarray(logits, dtype=np.float32), xp
    return logits, xp


def apply_penalties(logits, counts, repetition_penalty=1.0, frequency_penalty=0.0,
                    presence_penalty=0.0):
    """logits (B, V); counts (B, V) on the same device: how often each row has seen each token."""
    out, xp = _float(logits)
    counts = counts.astype(out.dtype, copy=False)    # so the Python floats below keep it
    seen = counts > 0
    if repetition_penalty != 1.0:
        out = xp.where(seen, xp.where(out > 0, out / repetition_penalty,
                                      out * repetition_penalty), out)
    if frequency_penalty or presence_penalty:
        out = out - (frequency_penalty * counts + presence_penalty * seen.astype(out.dtype))
    return out


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """Temperature, then top-k, top-p and min-p; removed tokens get -inf. temperature must be
    > 0 here (greedy decoding takes the argmax instead)."""
    out, xp = _float(logits)
    out = out / temperature
    if top_k is not None and top_k < out.shape[-1]:
        kth = -xp.partition(-out, top_k - 1, axis=-1)[:, top_k - 1:top_k]   # k-th largest
        out = xp.where(out < kth, -np.inf, out)
    if top_p is not None and top_p < 1:
        p = probabilities(out)
        order = xp.argsort(-p, axis=-1, kind="stable")
        sorted_p = xp.take_along_axis(p, order, axis=-1)
        before = xp.cumsum(sorted_p, axis=-1) - sorted_p          # mass of strictly likelier
        # keep a token when the likelier ones do not yet reach top_p; ties with the last kept
        # token are kept too
        keep_sorted = before < top_p
        last = xp.where(keep_sorted, sorted_p, np.inf).min(axis=-1, keepdims=True)
        keep = p >= last
        out = xp.where(keep, out, -np.inf)
    if min_p is not None and min_p > 0:
        p = probabilities(out)
        out = xp.where(p >= min_p * p.max(axis=-1, keepdims=True), out, -np.inf)
    return out


def probabilities(logits):
    """softmax over the last axis (rows of -inf entries get probability 0)."""
    logits, xp = _float(logits)
    z = logits - logits.max(axis=-1, keepdims=True)
    p = xp.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def sample(p, generator):
    """One draw per row from probabilities p (B, V) (unnormalised is fine) by inverting the CDF:
    the id is the first i with c_i > u * c_V, i.e. the number of cumulative sums c_i <= u * c_V,
    u uniform in [0, 1) from `generator` (a tinygrad_llm.random.Generator on p's device). A
    token of probability 0 adds no step to c, so it is never drawn, even at u = 0 (a float32
    uniform is 0 once in 2^24 draws). Returns (B,) int64 ids on p's device."""
    xp = array_module(p)
    u = generator.random((p.shape[0], 1), dtype=p.dtype)          # (B, 1)
    c = xp.cumsum(p, axis=-1)                                     # (B, V)
    return xp.minimum((c <= u * c[:, -1:]).sum(axis=-1), p.shape[-1] - 1)


def distribution(logits, config):
    """(B, V) logits -> (B, V) probabilities under config's filters, on the logits' device: the
    filtered softmax, or one-hot at the argmax for greedy decoding."""
    logits, xp = _float(logits)
    if config.greedy:
        ids = logits.argmax(axis=-1)
        return (xp.arange(logits.shape[-1]) == ids[:, None]).astype(logits.dtype)
    return probabilities(filter_logits(logits, config.temperature, config.top_k, config.top_p,
                                       config.min_p))


def pick(p, config, generator):
    """(B,) ids from distribution()'s p: its argmax for greedy decoding (no draw), else a draw."""
    return p.argmax(axis=-1) if config.greedy else sample(p, generator)


def _penalised(logits, config, counts):
    if config.penalised and counts is not None:
        return apply_penalties(logits, counts, config.repetition_penalty,
                               config.frequency_penalty, config.presence_penalty)
    return logits


def next_tokens(logits, config, generator, counts=None):
    """(B, V) logits -> ((B,) int64 ids, (B, V) the distribution they were drawn from), both on
    the logits' device. generator: a tinygrad_llm.random.Generator on that device; counts: (B, V)
    seen-token counts there too (for the penalties)."""
    p = distribution(_penalised(logits, config, counts), config)
    return pick(p, config, generator), p


def next_ids(logits, config, generator, counts=None):
    """next_tokens' ids alone, the decoding loops' per-token call: greedy is then one argmax."""
    logits, _ = _float(_penalised(logits, config, counts))
    if config.greedy:
        return logits.argmax(axis=-1)
    return sample(distribution(logits, config), generator)
