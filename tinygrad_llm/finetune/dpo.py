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

log pi(y | x) is summed over the response tokens only (`sequence_logprobs` with a loss mask).
"""
import numpy as np

from .. import backend
from ..nn import functional as F
from ..ops import StackOp
from ..tensor import Tensor

__all__ = ["sequence_logprobs", "dpo_loss", "log_sigmoid"]


def log_sigmoid(z):
    """log sigmoid(z) for a Tensor, stable for large |z|: the first column of log_softmax over
    [z, 0] (log e^z / (e^z + 1))."""
    return F.log_softmax(StackOp.apply(z, z * 0.0, axis=-1), axis=-1)[..., 0]


def sequence_logprobs(model, ids, learn):
    """ids: (B, T) token ids, learn: (B, T) bool (the response tokens) -> Tensor (B,): the sum of
    log p(ids[t] | ids[<t]) over the positions t >= 1 where learn[t]."""
    ids, learn = np.asarray(ids), np.asarray(learn, dtype=bool)
    logits = model(ids[:, :-1])                                         # (B, T-1, V)
    logp = F.log_softmax(logits, axis=-1)
    picked = logp[np.arange(ids.shape[0])[:, None], np.arange(ids.shape[1] - 1)[None, :],
                  ids[:, 1:]]                                           # (B, T-1)
    mask = backend.to_device(learn[:, 1:].astype(logits.dtype), logits.device)
    return (picked * Tensor._wrap(mask)).sum(axis=-1)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    """Sequence log-probs (B,) of the chosen and rejected responses under the policy (Tensors)
    and the reference (arrays or Tensors, no gradient) -> (loss Tensor, stats dict):
    reward_accuracy (how often r(y_w) > r(y_l)), reward_margin (mean r(y_w) - r(y_l)),
    chosen_reward and rejected_reward (means)."""
    if not beta > 0:
        raise ValueError(f"dpo_loss: beta must be > 0, got {beta!r}")
    ref_c = np.asarray(backend.to_numpy(getattr(ref_chosen, "data", ref_chosen)))
    ref_r = np.asarray(backend.to_numpy(getattr(ref_rejected, "data", ref_rejected)))
    chosen = (policy_chosen - Tensor._wrap(backend.to_device(
        ref_c.astype(policy_chosen.dtype), policy_chosen.device))) * beta
    rejected = (policy_rejected - Tensor._wrap(backend.to_device(
        ref_r.astype(policy_rejected.dtype), policy_rejected.device))) * beta
    margin = chosen - rejected
    loss = -log_sigmoid(margin).mean()
    m, c, r = (backend.to_numpy(t.data) for t in (margin, chosen, rejected))
    stats = {"reward_accuracy": float((m > 0).mean()), "reward_margin": float(m.mean()),
             "chosen_reward": float(c.mean()), "rejected_reward": float(r.mean())}
    return loss, stats
