"""RLHF by policy gradient: sample responses, score them, make the good ones likelier, and stay
near the reference model.

We use REINFORCE with a baseline (Williams, 1992) rather than PPO: one gradient step per batch of
samples, so no ratio clipping or value network is needed, and the estimator is the textbook one.
The objective of Ouyang et al. (2022) is

    maximise  E_{y ~ pi}[ R(x, y) ] - beta KL(pi || pi_ref)

and its gradient, with the KL taken per sample (log pi(y) - log pi_ref(y), summed over the
response tokens) and folded into the reward, is

    grad = E[ (R(x, y) - beta (log pi(y) - log pi_ref(y)) - b) grad log pi(y) ]

b, the baseline, is a running mean of the penalised reward: subtracting it leaves the gradient
unbiased (E[grad log pi] = 0) and cuts its variance, so only better-than-usual samples are pushed
up. The rewards come from a reward model (heads.SequenceHead) or any programmatic function.

With a 0/1 reward a running mean is a poor baseline: an easy prompt whose samples are all right
still pushes them all up, a hard one all down. Sampling k responses to each prompt gives a
baseline per prompt: `loss(..., group_size=k)` uses, for sample i, the mean penalised reward of
the other k - 1 samples of its prompt (leave-one-out, REINFORCE-leave-one-out of Kool et al.,
2019 and Ahmadian et al., 2024). It does not depend on sample i, so the gradient stays unbiased,
and a prompt whose samples all score alike contributes nothing.
"""
import numpy as np

from .. import backend
from ..generate import generate
from ..tensor import Tensor, no_grad
from .dpo import sequence_logprobs

__all__ = ["rollout", "Reinforce"]


def rollout(policy, prompts, max_new_tokens, temperature=1.0, top_k=None, seed=0,
            stop_ids=None):
    """Sample one response per prompt. Returns (ids (B, T) right-padded with 0, learn (B, T)
    bool marking the response tokens, responses: list of the new-token arrays)."""
    out = generate(policy, [np.asarray(p) for p in prompts], max_new_tokens,
                   temperature=temperature, top_k=top_k, seed=seed, stop_ids=stop_ids,
                   context_shift=True)
    width = max(len(o) for o in out)
    ids = np.zeros((len(out), width), np.int64)
    learn = np.zeros((len(out), width), bool)
    responses = []
    for i, (p, o) in enumerate(zip(prompts, out)):
        ids[i, :len(o)] = o
        learn[i, len(p):len(o)] = True
        responses.append(o[len(p):])
    return ids, learn, responses


class Reinforce:
    """One policy-gradient step per call of `loss`: policy (trained), reference (frozen), kl_coef
    = beta, baseline_momentum for the running-mean baseline."""

    def __init__(self, policy, reference, kl_coef=0.05, baseline_momentum=0.9):
        if kl_coef < 0 or not 0.0 <= baseline_momentum < 1.0:
            raise ValueError(f"Reinforce: kl_coef must be >= 0 and baseline_momentum in [0, 1), "
                             f"got {kl_coef!r}, {baseline_momentum!r}")
        self.policy, self.reference = policy, reference
        self.kl_coef, self.momentum = kl_coef, baseline_momentum
        self.baseline = None

    def loss(self, ids, learn, rewards, group_size=None):
        """ids, learn: from rollout; rewards: (B,) floats -> (loss Tensor, stats).
        group_size=k: rows come in groups of k samples of one prompt (rows [0, k) the first
        prompt, ...), and each sample's baseline is the mean of the rest of its group."""
        rewards = np.asarray(rewards, dtype=np.float64)
        if group_size is not None and (group_size < 2 or len(rewards) % group_size):
            raise ValueError(f"Reinforce.loss: group_size must be >= 2 and divide the batch "
                             f"({len(rewards)} rows), got {group_size!r}")
        logp = sequence_logprobs(self.policy, ids, learn)                 # (B,), with grad
        with no_grad():
            ref = backend.to_numpy(sequence_logprobs(self.reference, ids, learn).data)
        kl = backend.to_numpy(logp.data) - ref                            # per-sample estimate
        shaped = rewards - self.kl_coef * kl
        mean = float(shaped.mean())
        self.baseline = mean if self.baseline is None else \
            self.momentum * self.baseline + (1 - self.momentum) * mean
        if group_size is None:
            baseline = self.baseline
        else:                                      # leave-one-out mean of each group
            groups = shaped.reshape(-1, group_size)
            baseline = ((groups.sum(1, keepdims=True) - groups) / (group_size - 1)).reshape(-1)
        advantage = (shaped - baseline).astype(logp.dtype)
        weights = Tensor._wrap(backend.to_device(advantage, logp.device))
        loss = -(logp * weights).mean()
        stats = {"mean_reward": float(rewards.mean()), "kl": float(kl.mean()),
                 "baseline": self.baseline}
        return loss, stats
