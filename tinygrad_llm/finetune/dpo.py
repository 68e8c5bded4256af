"""Direct preference optimisation (Rafailov et al., 2023): learn from pairs (prompt, chosen y_w,
rejected y_l) without a reward model or sampling.

The policy's implicit reward of a response is r(y) = beta * (log pi(y | x) - log pi_ref(y | x)),
its log-probability gain over a frozen reference (the model before DPO). The Bradley-Terry
likelihood that y_w is preferred gives the loss

    L = -log sigmoid( r(y_w) - r(y_l) )
      = -log sigmoid( beta [ (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)) ] )

At the start pi = pi_ref, every reward is 0 and L = log 2. Its gradient raises log pi(y_w) and
lowers log pi(y_l), weighted by sigmoid(r(y_l) - r(y_w)): pairs the policy already orders right
count little. beta sets how far from the reference the policy may go (the KL penalty of the RLHF
objective this loss solves in closed form).

log pi(y | x) is summed over the response tokens only (`sequence_logprobs` with a loss mask);
`encode_pairs` renders pairs through the chat template into the (ids, learn) arrays it reads.
"""
import numpy as np

from .. import backend
from ..nn import functional as F
from ..ops import StackOp
from ..tensor import Tensor, array_of

__all__ = ["sequence_logprobs", "dpo_loss", "log_sigmoid", "encode_pairs"]


def log_sigmoid(z):
    """log sigmoid(z) for a Tensor, stable for large |z|: the first column of log_softmax over
    [z, 0] (log e^z / (e^z + 1))."""
    return F.log_softmax(StackOp.apply(z, z * 0.0, axis=-1), axis=-1)[..., 0]


def encode_pairs(template, pairs):
    """[{"prompt", "chosen", "rejected"}] -> {"chosen": (ids, learn), "rejected": (ids, learn)}:
    each side's conversations right-padded with 0 into (N, W) arrays, row i of both the same
    prompt; learn marks the assistant's tokens (the template's)."""
    out = {}
    for side in ("chosen", "rejected"):
        rendered = [template.render([{"role": "user", "content": p["prompt"]},
                                     {"role": "assistant", "content": p[side]}]) for p in pairs]
        width = max(len(ids) for ids, _ in rendered)
        ids = np.zeros((len(rendered), width), np.int64)
        learn = np.zeros((len(rendered), width), bool)
        for i, (x, m) in enumerate(rendered):
            ids[i, :len(x)], learn[i, :len(x)] = x, m
        out[side] = (ids, learn)
    return out


def sequence_logprobs(model, ids, learn):
    """ids: (B, T) token ids, learn: (B, T) bool (the response tokens) -> Tensor (B,): the sum of
    log p(ids[t] | ids[<t]) over the positions t >= 1 where learn[t]."""
    device = next(iter(model.parameters())).device
    ids = backend.to_device(array_of(ids), device)
    xp = backend.array_module(ids)
    logits = model(ids[:, :-1])                                         # (B, T-1, V)
    logp = F.log_softmax(logits, axis=-1)
    picked = logp[xp.arange(ids.shape[0])[:, None], xp.arange(ids.shape[1] - 1)[None, :],
                  ids[:, 1:]]                                           # (B, T-1)
    mask = backend.to_device(array_of(learn), device, bool)[:, 1:]
    return (picked * Tensor._wrap(mask.astype(logits.dtype))).sum(axis=-1)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    """Sequence log-probs (B,) of the chosen and rejected responses under the policy (Tensors)
    and the reference (arrays or Tensors, no gradient) -> (loss Tensor, stats dict):
    reward_accuracy (how often r(y_w) > r(y_l)), reward_margin (mean r(y_w) - r(y_l)),
    chosen_reward and rejected_reward (means)."""
    if not beta > 0:
        raise ValueError(f"dpo_loss: beta must be > 0, got {beta!r}")
    def reference(r):         # the reference's log-probs, on the policy's device and dtype
        return Tensor._wrap(backend.to_device(array_of(r), policy_chosen.device,
                                              policy_chosen.dtype))
    chosen = (policy_chosen - reference(ref_chosen)) * beta
    rejected = (policy_rejected - reference(ref_rejected)) * beta
    margin = chosen - rejected
    loss = -log_sigmoid(margin).mean()
    xp = backend.array_module(margin.data)
    m, c, r = margin.data, chosen.data, rejected.data
    stats = xp.stack([(m > 0).mean(dtype=m.dtype), m.mean(), c.mean(), r.mean()])
    accuracy, margin_mean, c_mean, r_mean = backend.to_numpy(stats).tolist()   # one read
    stats = {"reward_accuracy": accuracy, "reward_margin": margin_mean,
             "chosen_reward": c_mean, "rejected_reward": r_mean}
    return loss, stats
