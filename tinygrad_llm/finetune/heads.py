"""Heads on a pretrained backbone: a scalar reward model, sequence classification, and the
losses that train them and a distilled student.

SequenceHead(backbone, n_out) pools one vector per sequence and maps it to n_out numbers:
  - a decoder (GPT) reads left to right, so only its last real token has seen the whole
    sequence: pool the hidden state there (sequences right-padded; `lengths` says where);
  - a bidirectional Encoder pools its first ([CLS]) position, as BERT does.
n_out = 1 is a reward model (Ouyang et al., 2022): r(x, y) a scalar; n_out = k is a classifier.

Bradley-Terry: P(y_w preferred to y_l) = sigmoid(r(y_w) - r(y_l)), so the pairwise loss is
-log sigmoid(r_w - r_l), and a pair is ranked right when r_w > r_l.

Distillation (Hinton et al., 2015): the student matches the teacher's distribution softened by a
temperature T, which shows how the teacher ranks the wrong answers too:
    L = alpha T^2 KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) CE(z_s, y)
T^2 keeps the soft term's gradient the same size as T changes.
"""
import numpy as np

from .. import backend
from ..nn import functional as F
from ..nn.layers import Linear
from ..nn.module import Module
from ..tensor import Tensor, array_of
from .dpo import log_sigmoid

__all__ = ["SequenceHead", "bradley_terry_loss", "distillation_loss"]


class SequenceHead(Module):
    """backbone: a GPT (pools the last real token) or an Encoder (pools position 0);
    n_out: outputs per sequence (1: a reward model)."""

    def __init__(self, backbone, n_out=1):
        super().__init__()
        self.backbone = backbone
        self.decoder = hasattr(backbone, "hidden_states")
        like = next(iter(backbone.parameters()))
        self.score = Linear(backbone.config.n_embd, n_out, device=like.device, dtype=like.dtype)
        if n_out == 1:                       # a reward starts equal for every sequence
            self.score.weight.data[...] = 0
        self.n_out = n_out

    def forward(self, idx, lengths=None):
        """idx: (B, T) ids, right-padded; lengths: (B,) real tokens per row (default T) ->
        (B, n_out), or (B,) when n_out == 1."""
        idx = array_of(idx)                    # ids stay where they are
        idx = idx if hasattr(idx, "shape") else np.asarray(idx)
        b, t = idx.shape
        lengths = np.full(b, t) if lengths is None else np.asarray(lengths)   # (B,) on the host
        if lengths.shape != (b,) or lengths.min() < 1 or lengths.max() > t:
            raise ValueError(f"SequenceHead: lengths must be (B,) = ({b},) ints in [1, {t}], "
                             f"got {lengths!r}")
        mask = np.arange(t)[None, :] < lengths[:, None]
        if self.decoder:
            h = self.backbone.hidden_states(idx)          # causal: padding after is never seen
            xp = backend.array_module(h.data)
            pooled = h[xp.arange(b), backend.to_device(lengths - 1, h.device)]
        else:
            h = self.backbone(idx, padding_mask=None if mask.all() else mask)
            pooled = h[:, 0]
        out = self.score(pooled)
        return out.reshape(b) if self.n_out == 1 else out


def bradley_terry_loss(r_chosen, r_rejected):
    """(loss Tensor, accuracy): -mean log sigmoid(r_w - r_l) and how often r_w > r_l."""
    margin = r_chosen - r_rejected
    accuracy = float((margin.data > 0).mean())         # one read (a sync on a GPU)
    return -log_sigmoid(margin).mean(), accuracy


def distillation_loss(student_logits, teacher_logits, targets=None, temperature=2.0, alpha=0.5):
    """student_logits: (..., V) Tensor; teacher_logits: (..., V) array or Tensor (no gradient);
    targets: (...) ids for the hard-label term (-100 ignored), needed when alpha < 1."""
    if not temperature > 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distillation_loss: temperature must be > 0 and alpha in [0, 1], got "
                         f"temperature={temperature!r}, alpha={alpha!r}")
    if alpha < 1.0 and targets is None:
        raise ValueError("distillation_loss: alpha < 1 mixes in the hard-label loss, which needs "
                         "targets")
    # the teacher's softmax on the student's device and in its dtype (no host round trip)
    t = backend.to_device(array_of(teacher_logits), student_logits.device,
                          student_logits.dtype) * (1.0 / temperature)
    xp = backend.array_module(t)
    t = t - t.max(axis=-1, keepdims=True)
    log_p_teacher = t - xp.log(xp.exp(t).sum(axis=-1, keepdims=True))   # exact log-softmax
    p_teacher = xp.exp(log_p_teacher)
    log_q = F.log_softmax(student_logits * (1.0 / temperature), axis=-1)
    teacher = Tensor._wrap(p_teacher)
    entropy = Tensor._wrap((p_teacher * log_p_teacher).sum(axis=-1).mean())   # -H(p), a constant
    kl = -(teacher * log_q).sum(axis=-1).mean() + entropy     # KL(p || q) = H(p, q) - H(p)
    loss = kl * (alpha * temperature ** 2)
    if alpha < 1.0:
        loss = loss + F.cross_entropy(student_logits, targets) * (1.0 - alpha)
    return loss
