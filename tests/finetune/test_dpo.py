"""DPO: the loss is log 2 when the policy equals the reference, its gradient raises the chosen
response and lowers the rejected one, it gradchecks, the statistics follow their definitions,
log_sigmoid is stable, and sequence_logprobs sums only the response tokens."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor, gradcheck, no_grad
from tinygrad_llm.finetune import dpo_loss, sequence_logprobs
from tinygrad_llm.finetune.dpo import log_sigmoid
from tinygrad_llm.models import GPT, GPTConfig


def test_log_two_at_the_start_and_the_gradient_direction():
    chosen = Tensor(np.array([-5.0, -3.0, -8.0]), requires_grad=True)
    rejected = Tensor(np.array([-4.0, -6.0, -2.0]), requires_grad=True)
    loss, stats = dpo_loss(chosen, rejected, chosen.numpy(), rejected.numpy(), beta=0.3)
    assert loss.numpy() == pytest.approx(np.log(2), abs=1e-12)
    assert stats["reward_margin"] == 0 and stats["reward_accuracy"] == 0
    loss.backward()
    np.testing.assert_allclose(chosen.grad.numpy(), -0.3 * 0.5 / 3)     # raise log pi(y_w)
    np.testing.assert_allclose(rejected.grad.numpy(), 0.3 * 0.5 / 3)    # lower log pi(y_l)


def test_loss_gradchecks_and_stats():
    rng = np.random.default_rng(0)
    chosen = Tensor(rng.standard_normal(5), requires_grad=True)
    rejected = Tensor(rng.standard_normal(5), requires_grad=True)
    ref_c, ref_r = rng.standard_normal(5), rng.standard_normal(5)
    gradcheck(lambda c, r: dpo_loss(c, r, ref_c, ref_r, beta=0.7)[0], chosen, rejected)
    loss, stats = dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.7)
    margin = 0.7 * ((chosen.numpy() - ref_c) - (rejected.numpy() - ref_r))
    assert loss.numpy() == pytest.approx(np.mean(np.log1p(np.exp(-margin))))
    assert stats["reward_accuracy"] == pytest.approx((margin > 0).mean())
    assert stats["reward_margin"] == pytest.approx(margin.mean())
    assert stats["chosen_reward"] == pytest.approx(0.7 * (chosen.numpy() - ref_c).mean())


def test_log_sigmoid_is_stable():
    z = Tensor(np.array([-1e4, -30.0, 0.0, 30.0, 1e4]), requires_grad=True)
    out = log_sigmoid(z).numpy()
    assert np.isfinite(out).all()
    # (log_softmax's z - logsumexp: exact to float64's absolute precision, ~1e-16)
    np.testing.assert_allclose(out, [-1e4, -30.0, -np.log(2), -np.exp(-30.0), 0.0], rtol=1e-9,
                               atol=1e-15)
    gradcheck(lambda z: log_sigmoid(z), Tensor(np.array([-3.0, 0.5, 4.0]), requires_grad=True))


def test_sequence_logprobs_sums_only_the_response():
    tl.manual_seed(0)
    model = GPT(GPTConfig.preset("gpt2", vocab_size=20, n_layer=1, n_head=2, n_embd=16,
                                 block_size=16)).to(dtype=np.float64).eval()
    ids = np.random.default_rng(1).integers(0, 20, (2, 10))
    learn = np.zeros((2, 10), bool)
    learn[:, 6:] = True
    with no_grad():
        got = sequence_logprobs(model, ids, learn).numpy()
        logits = model(ids[:, :-1]).numpy()
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    want = [sum(logp[b, t - 1, ids[b, t]] for t in range(6, 10)) for b in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_bad_beta():
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(Tensor(np.zeros(2)), Tensor(np.zeros(2)), np.zeros(2), np.zeros(2), beta=0)
