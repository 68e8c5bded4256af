"""The requests a language model answers when it is evaluated, shaped like EleutherAI's
lm-evaluation-harness (Gao et al., 2021) so that its users recognise them:

    loglikelihood([(context, continuation)]) -> [(sum log p(continuation | context), is_greedy)]
    loglikelihood_rolling(text)              -> nll, tokens, perplexity, bits per byte
    generate_until(context, stop=[...])      -> the greedy continuation, cut at the first stop
    multiple_choice(docs)                    -> per document acc, acc_norm, centred accuracy

Every task reduces to these: a multiple-choice question is the log-likelihood of each choice
after its context (Brown et al., 2020, sec. 2.4), a perplexity task is a rolling log-likelihood,
an open question is a generation compared with its answer.

Tokenising. Context and continuation are tokenised apart as the harness does: the continuation's
tokens are those of encode(context + continuation) after the first len(encode(context)), so a
merge across the boundary (BPE) gives the same ids as the text read whole; a trailing space of the
context moves to the continuation first (" Paris", not "Paris" after "is "). A context longer
than the model's max_positions loses its oldest tokens.

Shared context. Requests with the same (truncated) context are one group: its context runs once
through a dense KV cache of batch 1, the cache rows are repeated (KVCache.reorder) to one per
continuation, and the continuations go through as one right-padded batch at offset len(context).
Right padding needs no mask: attention is causal, so a real token never sees the padding after
it, and the padded positions' logits are not read. Compared with padding every (context +
continuation) into one batch this does the context's work once, not once per choice; a
multiple-choice task's four choices cost one context forward and one short batch.

Reading order: tokenising (split_request), loglikelihood, loglikelihood_rolling (rolling_windows),
generate_until, multiple_choice.
"""
import math
import numbers

import numpy as np

from .. import backend
from ..generate import generate, make_caches
from ..generate.decode_step import inference

__all__ = ["loglikelihood", "loglikelihood_rolling", "rolling_windows", "generate_until",
           "multiple_choice", "split_request"]


def _ids(tokenizer, text):
    return [int(i) for i in tokenizer.encode(text)]


def _positive_int(name, arg, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: {arg} must be an int >= 1, got {value!r}")
    return int(value)


def _log_softmax(logits):
    """logits: (..., V) array on any device -> float64 host log-probabilities (..., V)."""
    x = np.asarray(backend.to_numpy(logits), dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def split_request(tokenizer, context, continuation):
    """(context ids, continuation ids) of one request, tokenised as the harness does (module
    docstring). The continuation must give at least one token."""
    if not isinstance(context, str) or not isinstance(continuation, str):
        raise TypeError(f"loglikelihood: a request is (context: str, continuation: str), got "
                        f"({type(context).__name__}, {type(continuation).__name__})")
    n_space = len(context) - len(context.rstrip(" "))
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    whole = _ids(tokenizer, context + continuation)
    ctx = _ids(tokenizer, context)
    cont = whole[len(ctx):]
    if not cont:
        raise ValueError(f"loglikelihood: continuation {continuation!r} gives no tokens after "
                         f"context {context[-40:]!r}")
    if not ctx:
        raise ValueError(f"loglikelihood: context {context!r} gives no tokens; the first "
                         f"continuation token needs one to be predicted from (start the context "
                         f"with a newline or an end-of-text token)")
    return ctx, cont


def _truncate(ctx, cont, max_positions):
    """The context's newest tokens such that context + continuation[:-1] fits the model."""
    if len(cont) > max_positions:
        raise ValueError(f"loglikelihood: a continuation of {len(cont)} tokens does not fit "
                         f"max_positions={max_positions} with one token of context")
    return tuple(ctx[-(max_positions - len(cont) + 1):])


def _score_group(model, ctx, conts):
    """[(logprob, is_greedy)] of each continuation in `conts` after the context `ctx`, the
    context run once into a KV cache whose rows are then repeated (module docstring)."""
    longest = max(len(c) for c in conts)
    caches = make_caches(model, 1, len(ctx) + longest - 1)
    first = _log_softmax(model(np.asarray([ctx], dtype=np.int64), caches=caches).data)[0, -1]
    rows = []                                                   # each: (len(cont), V) logprobs
    if longest > 1:
        for cache in caches:
            if cache is not None:
                cache.reorder(np.zeros(len(conts), dtype=np.int64))
        # feed cont[:-1]; position j's logits predict cont[j + 1]
        feed = np.zeros((len(conts), longest - 1), dtype=np.int64)       # (K, Tc - 1)
        for i, c in enumerate(conts):
            feed[i, :len(c) - 1] = c[:-1]
        rest = _log_softmax(model(feed, caches=list(caches), offset=len(ctx)).data)
    for i, c in enumerate(conts):
        logp = first[None] if len(c) == 1 else np.concatenate([first[None],
                                                               rest[i, :len(c) - 1]])
        rows.append(logp)
    out = []
    for c, logp in zip(conts, rows):
        target = np.asarray(c)
        picked = logp[np.arange(len(c)), target]
        out.append((float(picked.sum()), bool((logp.argmax(axis=-1) == target).all())))
    return out


def loglikelihood(model, tokenizer, requests, batch_size=16):
    """[(sum of log p of the continuation's tokens, is_greedy)] for requests [(context,
    continuation)], in the requests' order. is_greedy: every continuation token is the argmax
    of its distribution (greedy decoding would have produced it). Requests sharing a context
    share its forward (module docstring); batch_size: continuations per batch. Log-probabilities
    are computed in float64 from the model's logits, under no_grad and in eval mode."""
    batch_size = _positive_int("loglikelihood", "batch_size", batch_size)
    requests = list(requests)
    limit = model.config.max_positions
    groups = {}                                     # truncated context -> [(request index, ids)]
    for i, request in enumerate(requests):
        if not isinstance(request, (tuple, list)) or len(request) != 2:
            raise TypeError(f"loglikelihood: requests[{i}] must be a (context, continuation) "
                            f"pair, got {request!r}")
        ctx, cont = split_request(tokenizer, *request)
        groups.setdefault(_truncate(ctx, cont, limit), []).append((i, cont))
    out = [None] * len(requests)
    with inference(model):
        for ctx, members in groups.items():
            for start in range(0, len(members), batch_size):
                part = members[start:start + batch_size]
                scores = _score_group(model, list(ctx), [c for _, c in part])
                for (i, _), score in zip(part, scores):
                    out[i] = score
    return out


# ---- rolling log-likelihood -----------------------------------------------------------------
def rolling_windows(n_tokens, window, stride):
    """[(start, end, n_scored)]: windows ids[start:end] of at most `window` inputs, each scoring
    its last n_scored targets (the targets of inputs start..end-1 are ids[start+1:end+1]).

    Every target 1..n_tokens-1 is scored once, with as much context as the window allows: the
    first window scores all its targets; each next one advances by `stride` targets and keeps
    the `window - stride` before them as context only (stride = window: disjoint windows)."""
    windows, done = [], 0                         # done: targets scored so far (ids[1..done])
    while done < n_tokens - 1:
        end = min(n_tokens - 1, (done + stride) if done else window)
        start = max(0, end - window)
        windows.append((start, end, end - done))
        done = end
    return windows


def loglikelihood_rolling(model, tokenizer, text, stride=None, batch_size=16):
    """Negative log-likelihood of `text` read in windows of the model's max_positions.

    The first token is context only; every later token is scored once (rolling_windows).
    stride: targets each window adds after the first (default: the window, no overlap; smaller
    gives each token more context at window / stride times the cost).
    Returns {"nll": total nats, "tokens": tokens scored, "perplexity": exp(nll / tokens),
    "bits_per_byte": nll / ln 2 / bytes, "bytes": UTF-8 bytes of the text after the first
    token, "windows": [(nll, tokens, ...)] per window (for a bootstrap over windows)}.
    Bits per byte divides by bytes, not tokens, so models with different tokenizers compare
    (Gao et al., 2020, The Pile, sec. 3)."""
    name = "loglikelihood_rolling"
    if not isinstance(text, str):
        raise TypeError(f"{name}: text must be a str, got {type(text).__name__}")
    ids = _ids(tokenizer, text)
    if len(ids) < 2:
        raise ValueError(f"{name}: text must give at least 2 tokens, got {len(ids)}")
    window = model.config.max_positions
    stride = window if stride is None else _positive_int(name, "stride", stride)
    if stride > window:
        raise ValueError(f"{name}: stride must be <= the window (max_positions={window}), got "
                         f"{stride}")
    batch_size = _positive_int(name, "batch_size", batch_size)
    spans = rolling_windows(len(ids), window, stride)
    ids = np.asarray(ids, dtype=np.int64)
    per_window = [None] * len(spans)
    by_length = {}                                   # equal-length windows share one batch
    for k, (start, end, _) in enumerate(spans):
        by_length.setdefault(end - start, []).append(k)
    with inference(model):
        for members in by_length.values():
            for b in range(0, len(members), batch_size):
                part = members[b:b + batch_size]
                x = np.stack([ids[spans[k][0]:spans[k][1]] for k in part])           # (B, T)
                y = np.stack([ids[spans[k][0] + 1:spans[k][1] + 1] for k in part])   # (B, T)
                logp = _log_softmax(model(x).data)                                   # (B, T, V)
                nll = -np.take_along_axis(logp, y[..., None], axis=-1)[..., 0]       # (B, T)
                for row, k in enumerate(part):
                    n_scored = spans[k][2]
                    per_window[k] = (float(nll[row, -n_scored:].sum()), n_scored)
    total = sum(w[0] for w in per_window)
    n = sum(w[1] for w in per_window)
    n_bytes = len(text.encode("utf-8")) - len(tokenizer.decode(ids[:1]).encode("utf-8"))
    return {"nll": total, "tokens": n, "perplexity": math.exp(total / n),
            "bits_per_byte": total / math.log(2) / max(n_bytes, 1), "bytes": n_bytes,
            "windows": per_window}


# ---- generation -------------------------------------------------------------------------------
def generate_until(model, tokenizer, context, stop=("\n",), max_new_tokens=32, temperature=0.0,
                   seed=0):
    """The text the model writes after `context` (greedy by default), cut before the first stop
    string; generation ends at a stop string or after max_new_tokens tokens. context: a str, or
    a list of them answered together in one batched decode (a list of answers back). A context
    keeps its newest tokens when context + max_new_tokens would pass max_positions; if the
    answer itself runs past them, generate's context_shift keeps the newest half of the
    window."""
    max_new_tokens = _positive_int("generate_until", "max_new_tokens", max_new_tokens)
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    single = isinstance(context, str)
    contexts = [context] if single else list(context)
    if not contexts or not all(isinstance(c, str) for c in contexts):
        raise ValueError(f"generate_until: context must be a str or a non-empty list of str, "
                         f"got {context!r:.120}")
    keep = max(1, model.config.max_positions - max_new_tokens)
    prompts = []
    for c in contexts:
        ids = _ids(tokenizer, c)[-keep:]
        if not ids:
            raise ValueError(f"generate_until: context {c!r} gives no tokens")
        prompts.append(np.asarray(ids, dtype=np.int64))
    outs = generate(model, prompts, max_new_tokens, temperature=temperature, seed=seed,
                    stop_strings=stop or None, tokenizer=tokenizer, context_shift=True)
    texts = []
    for ids, out in zip(prompts, outs):
        text = tokenizer.decode([int(t) for t in out[len(ids):]])
        cuts = [text.find(s) for s in stop if s and s in text]
        texts.append(text[:min(cuts)] if cuts else text)
    return texts[0] if single else texts


# ---- multiple choice ----------------------------------------------------------------------------
def multiple_choice(model, tokenizer, docs, batch_size=16, target_delimiter=" "):
    """Per-document scores of multiple-choice docs [{"context", "choices", "gold"}]: each choice
    scored by loglikelihood(context, target_delimiter + choice).

    Returns {"acc", "acc_norm", "acc_centred"}: float64 arrays (len(docs),). acc: the gold
    choice has the highest log-likelihood; acc_norm: the highest log-likelihood per character of
    the choice (the harness's length normalisation, so long choices are not penalised for
    their length); acc_centred: (acc - chance) / (1 - chance) with chance = 1 / n_choices, so 0
    is guessing and 1 is perfect whatever the number of choices (the centring small-model
    reports use, e.g. the DCLM / nanochat CORE score)."""
    requests = [(doc["context"], target_delimiter + choice) for doc in docs
                for choice in doc["choices"]]
    scores = loglikelihood(model, tokenizer, requests, batch_size=batch_size)
    acc, acc_norm, centred = [], [], []
    k = 0
    for doc in docs:
        n = len(doc["choices"])
        logp = np.array([s for s, _ in scores[k:k + n]])
        chars = np.array([max(len(c), 1) for c in doc["choices"]], dtype=np.float64)
        k += n
        right = float(np.argmax(logp) == doc["gold"])
        acc.append(right)
        acc_norm.append(float(np.argmax(logp / chars) == doc["gold"]))
        chance = 1.0 / n
        centred.append((right - chance) / (1.0 - chance))
    return {"acc": np.array(acc), "acc_norm": np.array(acc_norm),
            "acc_centred": np.array(centred)}
