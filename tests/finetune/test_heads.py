"""Heads: the reward model's pooled position and its Bradley-Terry loss gradcheck, pairwise
accuracy, a classifier on the decoder and on the Encoder, and distillation's loss against its
definition (KL term zero when the student equals the teacher) with a gradcheck."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor, gradcheck, no_grad
from tinygrad_llm.finetune.heads import SequenceHead, bradley_terry_loss, distillation_loss
from tinygrad_llm.models import GPT, Encoder, GPTConfig

CONFIG = dict(vocab_size=30, n_layer=1, n_head=2, n_embd=16, block_size=16)


def gpt(dtype=np.float64):
    tl.manual_seed(0)
    return GPT(GPTConfig.preset("gpt2", **CONFIG)).to(dtype=dtype)


def test_reward_model_pools_the_last_real_token():
    model = SequenceHead(gpt(), n_out=1)
    model.score.weight.data[...] = np.random.default_rng(0).standard_normal((1, 16))
    ids = np.random.default_rng(1).integers(0, 30, (3, 10))
    lengths = np.array([10, 4, 7])
    with no_grad():
        r = model(ids, lengths).numpy()
        for i, n in enumerate(lengths):
            alone = model(ids[i:i + 1, :n]).numpy()
            assert r[i] == pytest.approx(alone[0], abs=1e-10)     # padding after it is unseen
    assert r.shape == (3,)


def test_bradley_terry_loss_gradchecks():
    model = SequenceHead(gpt(), n_out=1)
    model.score.weight.data[...] = np.random.default_rng(2).standard_normal((1, 16))
    rng = np.random.default_rng(3)
    chosen, rejected = rng.integers(0, 30, (4, 8)), rng.integers(0, 30, (4, 8))

    def loss(w):
        model.score.weight = w
        return bradley_terry_loss(model(chosen), model(rejected))[0]
    gradcheck(loss, model.score.weight)
    with no_grad():
        rc, rr = model(chosen), model(rejected)
        value, accuracy = bradley_terry_loss(rc, rr)
    margin = rc.numpy() - rr.numpy()
    assert value.numpy() == pytest.approx(np.mean(np.log1p(np.exp(-margin))))
    assert accuracy == pytest.approx((margin > 0).mean())


def test_classifiers_on_decoder_and_encoder():
    ids = np.random.default_rng(4).integers(0, 30, (5, 12))
    dec = SequenceHead(gpt(np.float32), n_out=3)
    tl.manual_seed(1)
    enc = SequenceHead(Encoder(GPTConfig.preset("gpt2", **CONFIG)), n_out=3)
    for head in (dec, enc):
        logits = head(ids, lengths=np.array([12, 5, 8, 12, 1]))
        assert logits.shape == (5, 3)
        labels = np.array([0, 1, 2, 0, 1])
        from tinygrad_llm.nn import functional as F
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        assert np.abs(head.score.weight.grad.numpy()).sum() > 0


def test_distillation_loss_definition_and_gradient():
    rng = np.random.default_rng(5)
    teacher = rng.standard_normal((2, 3, 7))
    targets = rng.integers(0, 7, (2, 3))
    same = distillation_loss(Tensor(teacher), teacher, targets, temperature=2.0, alpha=1.0)
    assert same.numpy() == pytest.approx(0.0, abs=1e-12)           # KL(p || p) = 0
    student = Tensor(rng.standard_normal((2, 3, 7)), requires_grad=True)
    T, a = 3.0, 0.6
    loss = distillation_loss(student, teacher, targets, temperature=T, alpha=a).numpy()
    p = np.exp(teacher / T) / np.exp(teacher / T).sum(-1, keepdims=True)
    q = np.exp(student.numpy() / T) / np.exp(student.numpy() / T).sum(-1, keepdims=True)
    kl = (p * (np.log(p) - np.log(q))).sum(-1).mean()
    ls = student.numpy() - np.log(np.exp(student.numpy()).sum(-1, keepdims=True))
    ce = -np.take_along_axis(ls, targets[..., None], -1).mean()
    assert loss == pytest.approx(a * T * T * kl + (1 - a) * ce, rel=1e-10)
    gradcheck(lambda s: distillation_loss(s, teacher, targets, T, a), student)


def test_bad_input():
    model = SequenceHead(gpt(), n_out=1)
    with pytest.raises(ValueError, match=r"lengths must be \(B,\) = \(2,\) ints in \[1, 4\]"):
        model(np.zeros((2, 4), np.int64), lengths=[0, 4])
    with pytest.raises(ValueError, match="needs targets"):
        distillation_loss(Tensor(np.zeros((1, 3))), np.zeros((1, 3)), None, 2.0, 0.5)
