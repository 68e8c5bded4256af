"""Optimizers, learning-rate schedules and gradient clipping, shaped like torch.optim.

    from tinygrad_llm.optim import AdamW, param_groups_for_weight_decay, warmup_cosine, set_lr
    opt = AdamW(param_groups_for_weight_decay(model, 0.1), lr=6e-4, betas=(0.9, 0.95))
    loss.backward(); clip_grad_norm_(model.parameters(), 1.0)
    set_lr(opt, warmup_cosine(step, 6e-4, 6e-5, 100, 5000)); opt.step(); opt.zero_grad()

Reading order: optimizer.py (the base class, state and checkpoints), flat.py (a GPU group's
update in one launch), sgd.py, adam.py, lion.py (each an update rule, its reference kernel and its
class; the fused kernels are in kernels/cpu/optim.py and kernels/cuda/optim.py), muon.py
(Newton-Schulz orthogonalised momentum for matrices, AdamW for the rest), schedule.py,
clip.py, scaler.py (dynamic loss scaling for float16).
"""
from .adam import Adam, AdamW
from .clip import clip_grad_norm_
from .lion import Lion
from .muon import Muon, muon_param_groups, newton_schulz_flops
from .scaler import GradScaler
from .optimizer import (Optimizer, flatten_state_dict, param_groups_for_weight_decay,
                        unflatten_state_dict)
from .schedule import (LambdaLR, constant, linear_decay, set_lr, size_warmup, warmup_cosine,
                       warmup_stable_decay)
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Lion", "param_groups_for_weight_decay",
           "flatten_state_dict", "unflatten_state_dict", "clip_grad_norm_", "warmup_cosine",
           "linear_decay", "warmup_stable_decay", "size_warmup", "constant", "set_lr", "LambdaLR",
           "GradScaler", "Muon", "muon_param_groups", "newton_schulz_flops"]
