"""Architecture search: a space of GPT configurations, the successive-halving loop that spends
training steps on the promising ones, the Pareto front of what it measured, and the decode speed
that a latency budget is measured in.

Reading order:
  1. the space: SEARCH_SPACE (choices per GPTConfig field, plus the FFN multiple and the
     attention kind), sample_configs (seeded, distinct, valid: heads divide the width, KV heads
     divide the heads), within_budget (the candidates a budget keeps, or an error naming the
     budget and the closest candidate).
  2. successive_halving (Jamieson & Talwalkar, 2016; one bracket of Hyperband, Li et al., 2018):
     n candidates trained min_steps, the best 1/eta kept and trained to eta times as many steps,
     and so on. The loop owns no model: train(i, candidate, steps) continues candidate i's own
     training by `steps` more steps (its model and optimizer state kept by the caller), and
     evaluate(i, candidate) scores it; losses are compared only within a rung, where every
     candidate has trained the same number of steps.
  3. pareto_front: the non-dominated points of any number of objectives (loss down, speed up).
  4. decode_tokens_per_second: greedy KV-cached decoding at batch 1, best of a few repeats.
"""
import itertools
import math
import time

import numpy as np

from ..generate import generate
from ..models.gpt import GPTConfig

__all__ = ["SEARCH_SPACE", "ATTENTION_KINDS", "config_from_choice", "sample_configs",
           "within_budget", "successive_halving", "pareto_front", "decode_tokens_per_second"]

ATTENTION_KINDS = ("mha", "gqa", "mqa")      # n_kv_head = n_head, a divisor between, 1

# The default space: every key but ffn_mult and attention is a GPTConfig field. ffn_mult sets
# ffn_hidden = ffn_mult * n_embd (rounded to a multiple of 8; SwiGLU's three matrices then cost
# 1.5x an MLP's two: the parameter budget, not the multiple, keeps the comparison fair).
# attention picks n_kv_head from n_head (Shazeer, 2019: MQA; Ainslie et al., 2023: GQA).
SEARCH_SPACE = {
    "n_layer": (1, 2, 3, 4),
    "n_embd": (32, 48, 64, 96),
    "n_head": (1, 2, 4, 8),
    "attention": ATTENTION_KINDS,
    "ffn_mult": (2, 3, 4),
    "norm": ("layernorm", "rmsnorm"),
    "prenorm": (True, False),              # pre-norm (GPT-2) or post-norm (Vaswani et al.)
    "pos": ("learned", "rope", "alibi"),
    "mlp": ("gelu", "relu", "swiglu"),
}


# ---- 1. the space -------------------------------------------------------------------------
def _kv_heads(kind, n_head):
    """n_kv_head for an attention kind, or None when the kind does not exist for n_head (GQA
    needs a divisor strictly between 1 and n_head; MQA and MHA coincide at one head)."""
    if kind == "mha":
        return n_head
    if kind == "mqa":
        return 1 if n_head > 1 else None
    if kind == "gqa":
        between = [g for g in range(2, n_head) if n_head % g == 0]
        return between[len(between) // 2] if between else None
    raise ValueError(f"attention: expected one of {ATTENTION_KINDS}, got {kind!r}")


def config_from_choice(choice, **fixed):
    """One point of the space (a dict of choices) and the fields every candidate shares
    (vocab_size, block_size, bias, ...) -> its GPTConfig, or None when the choice is invalid
    (heads that do not divide the width, an attention kind without a head count, an odd RoPE
    head width)."""
    fields = {**fixed, **choice}
    kind = fields.pop("attention", "mha")
    mult = fields.pop("ffn_mult", None)
    n_embd, n_head = fields.get("n_embd"), fields.get("n_head", 1)
    if n_embd is None:
        raise ValueError(f"choice: expected n_embd among the choices or the fixed fields, got "
                         f"{sorted(fields)}")
    if n_embd % n_head:
        return None
    n_kv = _kv_heads(kind, n_head)
    if n_kv is None or (fields.get("pos") == "rope" and (n_embd // n_head) % 2):
        return None
    if mult is not None:
        fields["ffn_hidden"] = max(8, 8 * round(mult * n_embd / 8))
    return GPTConfig(n_kv_head=n_kv, **fields)


def _check_space(space):
    if not isinstance(space, dict) or not space:
        raise ValueError(f"space: expected a non-empty dict of field -> choices, got {space!r}")
    for key, choices in space.items():
        if not isinstance(choices, (tuple, list)) or not choices:
            raise ValueError(f"space[{key!r}]: expected a non-empty tuple of choices, got "
                             f"{choices!r}")


def sample_configs(space, n, seed, fixed=None, max_draws=None):
    """n distinct valid points of `space`, drawn uniformly with a seed: each field's choice
    independently, an invalid combination drawn again (so the draw is uniform over the valid
    ones). Returns a list of (choice dict, GPTConfig). max_draws (default 200 n) bounds the
    draws; a space with fewer than n valid points raises, saying how many it found."""
    _check_space(space)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    fixed = dict(fixed or {})
    rng = np.random.default_rng(seed)
    max_draws = 200 * n if max_draws is None else max_draws
    found, seen = [], set()
    for _ in range(max_draws):
        choice = {k: v[rng.integers(len(v))] for k, v in space.items()}
        choice = {k: v.item() if isinstance(v, np.generic) else v for k, v in choice.items()}
        key = tuple(sorted(choice.items()))
        if key in seen:
            continue
        seen.add(key)
        config = config_from_choice(choice, **fixed)
        if config is not None:
            found.append((choice, config))
            if len(found) == n:
                return found
    raise ValueError(f"n: asked for {n} distinct valid configurations, found {len(found)} in "
                     f"{max_draws} draws of the space")


def within_budget(candidates, measure, limit, name, at_most=True):
    """The candidates whose measure(candidate) is <= limit (at_most) or >= limit (a speed
    floor), in their order. When none is, raises ValueError naming the budget and the
    candidate closest to it, so the caller knows how far off the budget is."""
    candidates = list(candidates)
    if not candidates:
        raise ValueError(f"{name}: no candidates to apply the budget to")
    values = [measure(c) for c in candidates]
    kept = [c for c, v in zip(candidates, values) if (v <= limit if at_most else v >= limit)]
    if not kept:
        best = min(values) if at_most else max(values)
        word = "smallest" if at_most else "largest"
        raise ValueError(f"{name}: no candidate meets the budget ({'<=' if at_most else '>='} "
                         f"{limit:g}); the {word} of the {len(values)} candidates has {best:g}")
    return kept


# ---- 2. successive halving ----------------------------------------------------------------
def successive_halving(candidates, train, evaluate, min_steps, eta=3, max_rungs=None, log=None):
    """Successive halving over `candidates` (any objects; indices name them).

    Rung k trains every survivor to min_steps * eta^k steps in all (train(i, candidate, steps)
    is asked for the steps still missing, so a survivor continues its own run instead of
    restarting), scores each with evaluate(i, candidate) (lower is better; a non-finite score
    ranks last), and keeps the best max(1, len // eta) for the next rung (ties go to the lower
    index). It stops after the rung with one survivor, or after max_rungs rungs.

    Returns {"records": [{"rung", "index", "steps", "loss"}, ...] (every evaluation, in order),
    "rungs": [[indices trained in rung k], ...], "winner": index (best of the last rung),
    "train_steps": total steps asked of train}.
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("candidates: expected at least one candidate, got none")
    for name, value, low in (("min_steps", min_steps, 1), ("eta", eta, 2)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if max_rungs is not None and (not isinstance(max_rungs, int) or max_rungs < 1):
        raise ValueError(f"max_rungs: expected a positive int or None, got {max_rungs!r}")
    log = log or (lambda line: None)
    trained = [0] * len(candidates)
    alive = list(range(len(candidates)))
    records, rungs, total = [], [], 0
    for rung in itertools.count():
        if max_rungs is not None and rung == max_rungs:
            break
        steps = min_steps * eta ** rung
        rungs.append(list(alive))
        scored = []
        for i in alive:
            train(i, candidates[i], steps - trained[i])
            total += steps - trained[i]
            trained[i] = steps
            loss = float(evaluate(i, candidates[i]))
            records.append({"rung": rung, "index": i, "steps": steps, "loss": loss})
            scored.append((loss if math.isfinite(loss) else math.inf, i))
            log(f"rung {rung}: candidate {i} at {steps} steps: loss {loss:.4f}")
        scored.sort()
        if len(alive) == 1:
            break
        alive = sorted(i for _, i in scored[:max(1, len(alive) // eta)])
    return {"records": records, "rungs": rungs, "winner": scored[0][1], "train_steps": total}


# ---- 3. the Pareto front ------------------------------------------------------------------
def pareto_front(points, maximize=None):
    """Indices of the non-dominated points, in their order. points: (N, M) numbers (a list of
    tuples), every objective minimised unless maximize[m] is True. Point p is dominated when
    another is no worse in every objective and better in one; equal points do not dominate each
    other, so ties are all kept. A point with a NaN objective is never on the front."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"points: expected a non-empty (N, M) array of numbers, got shape "
                         f"{p.shape}")
    maximize = [False] * p.shape[1] if maximize is None else list(maximize)
    if len(maximize) != p.shape[1]:
        raise ValueError(f"maximize: expected {p.shape[1]} flags (one per objective), got "
                         f"{len(maximize)}")
    p = np.where(maximize, -p, p)                          # every objective minimised
    ok = ~np.isnan(p).any(axis=1)
    front = []
    for i in np.flatnonzero(ok):
        no_worse = (p[ok] <= p[i]).all(axis=1)
        better = (p[ok] < p[i]).any(axis=1)
        if not (no_worse & better).any():
            front.append(int(i))
    return front


# ---- 4. decode speed ----------------------------------------------------------------------
def decode_tokens_per_second(model, new_tokens=32, prompt_tokens=1, repeats=3):
    """Greedy KV-cached decoding at batch 1: new_tokens / seconds of the fastest of `repeats`
    timed calls to generate(), after one untimed call (kernel compilation, caches, allocator).
    The speed does not depend on the weights, so an untrained model measures it. The fastest
    repeat is the least disturbed by other processes; it is still a wall-clock figure of this
    machine at this moment."""
    for name, value in (("new_tokens", new_tokens), ("prompt_tokens", prompt_tokens),
                        ("repeats", repeats)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    limit = model.config.max_positions
    if prompt_tokens + new_tokens > limit:
        raise ValueError(f"new_tokens: prompt_tokens + new_tokens = {prompt_tokens + new_tokens}"
                         f" exceeds the model's {limit} positions")
    prompt = np.zeros((1, prompt_tokens), dtype=np.int64)
    generate(model, prompt, max_new_tokens=min(4, new_tokens), temperature=0.0)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        generate(model, prompt, max_new_tokens=new_tokens, temperature=0.0)
        best = min(best, time.perf_counter() - start)
    return new_tokens / best
