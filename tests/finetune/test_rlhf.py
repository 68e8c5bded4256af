"""REINFORCE with a baseline: rollouts mark only the response, the loss is the advantage-weighted
negative log-likelihood (checked against its definition), and a few steps raise a programmatic
reward while the KL to the reference is reported."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import no_grad
from tinygrad_llm.finetune.dpo import sequence_logprobs
from tinygrad_llm.finetune.rlhf import Reinforce, rollout
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.optim import AdamW


def tiny():
    tl.manual_seed(0)
    return GPT(GPTConfig.preset("gpt2", vocab_size=6, n_layer=1, n_head=2, n_embd=16,
                                block_size=16))


def test_rollout_marks_the_response():
    ids, learn, responses = rollout(tiny(), [np.array([1, 2]), np.array([3])], 4, seed=1)
    assert ids.shape == (2, 6) and learn.sum() == 8
    assert not learn[0, :2].any() and learn[0, 2:].all() and learn[1, 1:5].all()
    assert all(len(r) == 4 for r in responses)


def test_loss_matches_its_definition():
    policy, reference = tiny(), tiny()
    policy.blocks[0].attn.qkv.weight.data *= 1.5               # differ from the reference
    trainer = Reinforce(policy, reference, kl_coef=0.2, baseline_momentum=0.5)
    ids, learn, _ = rollout(policy, [np.array([1])] * 4, 5, seed=2)
    rewards = np.array([1.0, 0.0, 0.5, 2.0])
    loss, stats = trainer.loss(ids, learn, rewards)
    with no_grad():
        lp = sequence_logprobs(policy, ids, learn).numpy()
        lr = sequence_logprobs(reference, ids, learn).numpy()
    shaped = rewards - 0.2 * (lp - lr)
    assert stats["kl"] == pytest.approx((lp - lr).mean())
    assert loss.numpy() == pytest.approx(-np.mean((shaped - shaped.mean()) * lp), rel=1e-4)


def test_group_baseline_leaves_one_out():
    policy, reference = tiny(), tiny()
    trainer = Reinforce(policy, reference, kl_coef=0.0)
    ids, learn, _ = rollout(policy, [np.array([1])] * 6, 4, seed=3)
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])              # two prompts, 3 samples each
    loss, _ = trainer.loss(ids, learn, rewards, group_size=3)
    with no_grad():
        lp = sequence_logprobs(policy, ids, learn).numpy()
    baseline = np.array([0.0, 0.5, 0.5, 1.0, 1.0, 1.0])             # the others' mean
    assert loss.numpy() == pytest.approx(-np.mean((rewards - baseline) * lp), rel=1e-4)
    with pytest.raises(ValueError, match="group_size must be >= 2 and divide the batch"):
        trainer.loss(ids, learn, rewards, group_size=4)


def test_policy_gradient_raises_the_reward():
    policy, reference = tiny(), tiny()
    trainer = Reinforce(policy, reference, kl_coef=0.01)
    opt = AdamW([p for p in policy.parameters()], lr=3e-2, weight_decay=0.0)
    prompts = [np.array([0])] * 16
    rewards_seen = []
    for step in range(25):
        policy.eval()
        ids, learn, responses = rollout(policy, prompts, 6, seed=step)
        rewards = np.array([np.mean(r == 3) for r in responses])   # say "3" as often as you can
        policy.train()
        loss, stats = trainer.loss(ids, learn, rewards)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rewards_seen.append(stats["mean_reward"])
    assert np.mean(rewards_seen[-5:]) > np.mean(rewards_seen[:5]) + 0.2, rewards_seen


def test_bad_input():
    with pytest.raises(ValueError, match="kl_coef must be >= 0"):
        Reinforce(tiny(), tiny(), kl_coef=-1)
