"""Probes of in-context learning and induction heads (Elhage et al., 2021; Olsson et al., 2022):
what each attention head attends to, how well each head matches prefixes on repeated random
tokens, the loss on the two copies of such a sequence, and the in-context learning score.

Reading order: attention_maps (the per-head probabilities, from the model's own modules under
no_grad), token_losses (per-position next-token loss), repeated_tokens (the probe sequences),
prefix_matching_scores and copy_losses (what an induction head does to them), icl_score (loss
late in the context minus loss early in it).

    induction head on [r_0 .. r_{R-1}, r_0 .. r_{R-1}]: the query at i >= R attends to
    i - R + 1, the token after the earlier occurrence of its own token, and copies it: the
    loss on the second copy falls far below the first's (which no model can predict).
"""
import numpy as np

from .. import backend
from ..models.gpt import position_bias
from ..nn import functional as F
from ..ops.attention import attention_probabilities
from ..tensor import Tensor, no_grad

__all__ = ["attention_maps", "token_losses", "repeated_tokens", "prefix_matching_scores",
           "copy_losses", "icl_score"]


def _check_mappable(model):
    """attention_maps re-runs the blocks one by one: a model whose blocks talk to each other
    beyond the residual stream (or without softmax attention) is refused, named."""
    c = model.config
    for failed, why in ((c.attention != "softmax", f"attention={c.attention!r}"),
                        (c.kv_share != 1, f"kv_share={c.kv_share}"),
                        (c.unet_skips, "unet_skips=True"),
                        (c.value_embeds, f"value_embeds={c.value_embeds}")):
        if failed:
            raise ValueError(f"attention_maps: softmax attention maps of a plain stack of blocks "
                             f"only; the model has {why}")


def _check_idx(model, idx, name="idx"):
    idx = np.asarray(idx)
    if idx.ndim != 2 or idx.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected (B, T) integer token ids, got shape {idx.shape} "
                         f"dtype {idx.dtype}")
    if idx.shape[1] > model.config.block_size:
        raise ValueError(f"{name}: {idx.shape[1]} tokens exceed the model's block_size="
                         f"{model.config.block_size}")
    return idx


def attention_maps(model, idx):
    """The attention probabilities of every head of a GPT on idx.

    model: a GPT with softmax attention (any positions, norms, MLP or none, GQA, QK-norm,
    windows). idx: (B, T) int ids, T <= block_size. Returns a list, one float64 NumPy array
    (B, H, T, T) per layer: row i holds query i's weights over keys 0..T-1 (each row sums to 1;
    future keys get 0). The blocks run one at a time in eval mode under no_grad, each layer's
    q and k taken from its own projections (with its norm, QK-norm and RoPE), so the maps are
    the ones its attention used; training mode is restored afterwards."""
    _check_mappable(model)
    idx = _check_idx(model, idx)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            ids = backend.to_device(idx, model.device)
            t = idx.shape[1]
            x = model.tok_emb(ids)                                          # (B, T, C)
            if model.pos_emb is not None:
                x = x + model.pos_emb(t, 0)
            bias = position_bias(model.pos_bias, t, t, x)
            maps = []
            for block in model.blocks:
                attn = block.attn
                q, k, _ = attn._project(block.norm1(x) if block.prenorm else x, 0, None)
                mask = None if bias is None else bias.data if isinstance(bias, Tensor) else bias
                maps.append(backend.to_numpy(attention_probabilities(     # float64, as forward's
                    q.data.astype(np.float64), k.data.astype(np.float64), mask, attn.causal,
                    None, attn.window or 0)))
                x, _ = block(x, bias=bias)
    finally:
        model.train(was_training)
    return maps


def token_losses(model, idx):
    """Per-position next-token cross-entropy (nats) of idx under the model, no_grad, eval
    mode: idx (B, T) -> (B, T - 1) float64, entry [b, i] the loss of predicting idx[b, i + 1]
    from idx[b, :i + 1]."""
    idx = _check_idx(model, idx)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            logits = model(backend.to_device(idx, model.device)).data       # (B, T, V)
    finally:
        model.train(was_training)
    logits = Tensor(backend.to_numpy(logits[:, :-1]).astype(np.float64))
    return F.cross_entropy(logits, idx[:, 1:], reduction="none").numpy()


def repeated_tokens(batch, length, vocab_size, rng, low=0):
    """Probe sequences (batch, 2 * length): `length` random tokens from [low, vocab_size), then
    the same tokens again. Tokens within a copy are distinct when the range allows it (so each
    token has exactly one earlier occurrence), drawn with replacement otherwise."""
    span = vocab_size - low
    if length < 2 or span < 2:
        raise ValueError(f"repeated_tokens: length must be >= 2 and the token range [{low}, "
                         f"{vocab_size}) hold >= 2 ids, got length={length}")
    if length <= span:
        half = np.stack([rng.permutation(span)[:length] for _ in range(batch)])
    else:
        half = rng.integers(0, span, size=(batch, length))
    half = half + low
    return np.concatenate([half, half], axis=1).astype(np.int64)


def _period(idx, period):
    t = idx.shape[1]
    if period is None:
        period = t // 2
    if not 1 <= period < t:
        raise ValueError(f"period: expected 1 <= period < T={t}, got {period}")
    if not np.array_equal(idx[:, period:], idx[:, :t - period]):
        raise ValueError(f"idx: expected sequences that repeat with period {period}")
    return period


def prefix_matching_scores(model, idx, period=None, maps=None):
    """Olsson et al.'s prefix-matching score of every head: on sequences that repeat with
    `period` (repeated_tokens; default T // 2), the mean attention weight that a query i >=
    period puts on key i - period + 1, the token right after the earlier occurrence of its own
    token. An induction head scores near 1; a uniform head about 1 / i.
    idx: (B, T) ids; maps: attention_maps(model, idx) if already computed.
    Returns (n_layer, H) float64."""
    idx = _check_idx(model, idx)
    period = _period(idx, period)
    maps = attention_maps(model, idx) if maps is None else maps
    t = idx.shape[1]
    queries = np.arange(period, t)
    return np.stack([m[:, :, queries, queries - period + 1].mean(axis=(0, 2)) for m in maps])


def copy_losses(model, idx, period=None, losses=None):
    """Mean next-token loss on each copy of sequences repeating with `period` (default T // 2):
    "first": predicting tokens 1 .. period - 1 (random: about log of the range for any model),
    "second": predicting tokens period + 1 .. T - 1 (each a repeat, predictable in context).
    The first token of the second copy is left out of both. losses: token_losses if computed.
    Returns {"first": float, "second": float}."""
    idx = _check_idx(model, idx)
    period = _period(idx, period)
    losses = token_losses(model, idx) if losses is None else losses
    return {"first": float(losses[:, :period - 1].mean()),
            "second": float(losses[:, period:].mean())}


def icl_score(model, idx, early=0.1, late=0.9, band=0.02, losses=None):
    """The in-context learning score of Olsson et al. (2022): the loss late in the context
    minus the loss early in it (their token 500 minus token 50 of 512), averaged over held-out
    sequences. Negative: later tokens are predicted better because the context helps.

    idx: (B, T) held-out ids. early, late: the positions as fractions of T (0.1, 0.9 by
    default: tokens 50 and 460 of 512); band: each position's loss is the mean over the
    positions within band * T of it (at least the position itself), to steady small batches.
    Returns {"score", "loss_early", "loss_late", "position_early", "position_late",
    "per_position"} with per_position the (T - 1,) mean loss at each position."""
    idx = _check_idx(model, idx)
    if not 0 <= early < late <= 1:
        raise ValueError(f"icl_score: expected 0 <= early < late <= 1, got early={early}, "
                         f"late={late}")
    losses = token_losses(model, idx) if losses is None else losses
    curve = losses.mean(axis=0)                                        # (T - 1,)
    n, half = len(curve), int(band * idx.shape[1])

    def at(fraction):
        p = min(n - 1, max(0, round(fraction * idx.shape[1]) - 1))
        return p, float(curve[max(0, p - half):p + half + 1].mean())
    (p_early, l_early), (p_late, l_late) = at(early), at(late)
    if p_late <= p_early:
        raise ValueError(f"icl_score: {idx.shape[1]} tokens are too few to tell position "
                         f"{early} from {late}")
    return {"score": l_late - l_early, "loss_early": l_early, "loss_late": l_late,
            "position_early": p_early + 1, "position_late": p_late + 1,
            "per_position": curve}
