"""Speculative decoding (Leviathan et al., 2023; Chen et al., 2023): a small draft model guesses
k tokens, the large target model checks all k in one forward pass, and a rejection rule keeps
the output distributed exactly as sampling from the target alone.

One round, with the target's next-token distributions p and the draft's q:

    draft:   d_1 ~ q_1, d_2 ~ q_2(. | d_1), ..., d_k ~ q_k       k cheap single-token steps
    target:  one forward over [last token, d_1 .. d_k]  ->  p_1 .. p_{k+1}
    accept d_i with probability min(1, p_i(d_i) / q_i(d_i)), in order; at the first rejection
    draw the replacement from the residual  r = max(0, p_i - q_i) / sum(max(0, p_i - q_i))
    and stop; if all k are accepted, draw one more token from p_{k+1}.

Why the output is distributed as p: a token x comes out at position i either as an accepted
draft, with probability q(x) min(1, p(x)/q(x)) = min(q(x), p(x)), or as a replacement after a
rejection, with probability (1 - sum_y min(q(y), p(y))) r(x) = max(0, p(x) - q(x)). The two add up
to min(q, p) + max(0, p - q) = p(x). Each round yields between 1 and k + 1 tokens for one target
pass, so when the draft agrees with the target often, the target runs far fewer times.

Greedy decoding is the special case of one-hot p and q: a draft token is accepted exactly when it
is the target's argmax, so the output equals the target's own greedy output token for token.

Both models keep KV caches; rejected tokens are dropped with `truncate`. The sampling filters
(temperature, top-k, top-p, min-p) apply to p and q alike, so the output follows the target's
filtered distribution. One sequence at a time (batch 1). p and q stay on the models' device, as
do the draws (a Philox generator): a round reads back each draft id, the k accept flags and the
one replacement or bonus id, never a distribution.
"""
import numpy as np

from .. import backend
from ..backend import array_module
from ..random import Generator
from .decode_step import forward_logits, inference
from .generate import _stop_ids, prepare_prompts
from .kv_cache import LinearAttentionState, make_caches
from .sampling import SamplingConfig, distribution, pick, sample

__all__ = ["speculative_generate"]


def _read_id(ids):
    """The one id of a (1,) device array, as a Python int (a read from the device)."""
    return int(backend.to_numpy(ids)[0])


def _verify(p, q, drafted, generator):
    """(accepted, last): how many drafts the round keeps, and the token after them: the
    replacement drawn from the residual at the first rejection, or a bonus draw from p's last row.

    p: (n + 1, V) target distributions; q: n (1, V) draft ones; drafted: n (1,) draft ids; all on
    one device. Accepting d_i when u_i < p_i(d_i) / q_i(d_i) is accepting with probability
    min(1, p/q), as u_i < 1; all n flags are drawn and read at once (the rule stops at the first
    rejection, so flags after it are not used)."""
    xp = array_module(p)
    n = len(q)
    if n:
        q, drafted, rows = xp.concatenate(q), xp.concatenate(drafted), xp.arange(n)   # (n, V)
        u = generator.random(n, dtype=p.dtype)
        accepted = backend.to_numpy(u < p[rows, drafted] / q[rows, drafted])     # (n,) bool
        rejected = np.flatnonzero(~accepted)
        if rejected.size:
            j = int(rejected[0])
            residual = xp.maximum(p[j:j + 1] - q[j:j + 1], 0.0)   # sample() normalises it
            return j, _read_id(sample(residual, generator))
    return n, _read_id(sample(p[n:], generator))


class _Model:
    """A model with its caches: feed tokens, get the distributions after each of them."""

    def __init__(self, model, max_len, slack, config):
        self.model, self.config = model, config
        self.caches = make_caches(model, 1, max_len, slack=slack)
        self.length = 0
        self.calls = 0

    def feed(self, tokens):
        logits = forward_logits(self.model, tokens, self.caches, self.length)
        self.length += len(tokens)
        self.calls += 1
        return distribution(logits, self.config)           # (t, V) on the model's device

    def truncate(self, length):
        for c in self.caches:
            if c is not None:
                c.truncate(length)
        self.length = length


def speculative_generate(target, draft, idx, max_new_tokens, k=4, temperature=0.0, top_k=None,
                         top_p=None, min_p=None, stop_ids=None, seed=0):
    """Generate up to max_new_tokens tokens from `target`, with `draft` proposing k at a time.

    idx: one prompt, (T,) or (1, T). Returns (out (1, T + n) int64, stats): stats holds
    proposed / accepted draft tokens, acceptance_rate, target_calls, draft_calls and
    tokens_per_target_call. The models must share a vocabulary."""
    config = SamplingConfig(temperature, top_k, top_p, min_p)
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"speculative_generate: k must be a positive int, got {k!r}")
    prompts, _ = prepare_prompts(idx)
    if len(prompts) != 1:
        raise ValueError(f"speculative_generate: one prompt at a time, got a batch of "
                         f"{len(prompts)}")
    if target.device != draft.device:
        raise ValueError(f"speculative_generate: the models are on different devices (target "
                         f"{target.device}, draft {draft.device}); move one with .to()")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"speculative_generate: the models' vocabularies differ (target "
                         f"{target.config.vocab_size}, draft {draft.config.vocab_size})")
    seq = [int(t) for t in prompts[0]]
    total = len(seq) + int(max_new_tokens) + k
    limit = min(target.config.max_positions, draft.config.max_positions)
    if len(seq) + max_new_tokens > limit:
        raise ValueError(f"speculative_generate: prompt {len(seq)} + max_new_tokens "
                         f"{max_new_tokens} exceed the models' {limit} positions")
    stops = _stop_ids(stop_ids)
    generator = Generator(target.device, seed)
    stats = {"proposed": 0, "accepted": 0}
    models = []
    for m in (target, draft):
        models.append(_Model(m, min(total, limit), k + 1, config))
    tgt, drf = models
    if any(isinstance(c, LinearAttentionState) for c in drf.caches):
        raise ValueError("speculative_generate: a linear-attention draft cannot roll back "
                         "several single-token steps; use a softmax-attention draft")
    generated = 0
    with inference(target), inference(draft):
        if len(seq) > 1:                  # both caches hold all but the last token
            tgt.feed(seq[:-1])
            drf.feed(seq[:-1])
        while generated < max_new_tokens:
            n_draft = int(min(k, max_new_tokens - generated, limit - len(seq)))
            start = len(seq)
            # the draft proposes n_draft tokens, one step at a time
            pending, proposals, q, drafted = seq[drf.length:], [], [], []
            for _ in range(n_draft):
                qi = drf.feed(pending)[-1:]                    # (1, V)
                d = pick(qi, config, generator)                 # (1,) on the device
                proposals.append(_read_id(d))
                q.append(qi)
                drafted.append(d)
                pending = proposals[-1:]
            # the target scores the last token and every proposal in one pass
            p = tgt.feed([seq[-1]] + proposals)                 # (n_draft + 1, V)
            accepted, last = _verify(p, q, drafted, generator)
            new = proposals[:accepted] + [last]
            stats["proposed"] += len(proposals)
            stats["accepted"] += accepted
            new = new[:max_new_tokens - generated]
            for j, t in enumerate(new):
                if t in stops:
                    new = new[:j + 1]
                    break
            seq += new
            generated += len(new)
            # keep in the caches only tokens that are now part of the sequence
            tgt.truncate(len(seq) - 1)
            drf.truncate(min(drf.length, start + accepted, len(seq) - 1))
            if new and new[-1] in stops:
                break
    stats["acceptance_rate"] = stats["accepted"] / max(stats["proposed"], 1)
    stats["target_calls"], stats["draft_calls"] = tgt.calls, drf.calls
    stats["tokens_per_target_call"] = generated / max(tgt.calls - (len(prompts[0]) > 1), 1)
    return np.array(seq, dtype=np.int64)[None], stats
