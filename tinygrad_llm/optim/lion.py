"""Lion, "EvoLved Sign Momentum" (Chen et al., 2023, "Symbolic Discovery of Optimization
Algorithms"): the update is the sign of an interpolation of momentum and gradient, so every
coordinate moves by exactly lr; one state array instead of Adam's two.

Reading order: the update rule, the reference kernel `lion_update` (fast versions:
kernels/{cpu,cuda}/optim.py), the Lion class.
"""
from ..backend import array_module
from ..kernels import kernel
from .optimizer import Optimizer, check_betas, check_number

__all__ = ["Lion", "lion_update"]


# ---- Lion (Chen et al., 2023, Algorithm 2) -------------------------------------------------------
#   c = beta1 * m + (1 - beta1) * g                  interpolation used for the update only
#   p = p * (1 - lr * weight_decay) - lr * sign(c)   decoupled decay, as AdamW
#   m = beta2 * m + (1 - beta2) * g                  the momentum tracks g with the slower beta2
# sign(0) = 0. The paper suggests an lr 3-10x smaller and a weight decay 3-10x larger than AdamW's.
@kernel("lion_update")   # fast: kernels/cpu/optim.py, kernels/cuda/optim.py
def lion_update(p, g, m, lr, beta1, beta2, weight_decay):
    """One Lion step in place on p and m; returns (p, m). p, g, m: same shape and dtype; the
    scalars are Python floats (kept in the arrays' dtype by NumPy)."""
    xp = array_module(p)
    c = beta1 * m + (1.0 - beta1) * g
    if weight_decay:
        p *= 1.0 - lr * weight_decay
    p -= lr * xp.sign(c)
    m *= beta2
    m += (1.0 - beta2) * g
    return p, m


class Lion(Optimizer):
    """Lion(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0). State per parameter:
    "exp_avg" (m)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    def _check_group(self, group):
        group["lr"] = check_number("lr", group["lr"])
        group["betas"] = check_betas(group["betas"])
        group["weight_decay"] = check_number("weight_decay", group["weight_decay"])
        return group

    def _state_names(self, group):
        return ("exp_avg",)

    def _update(self, p, g, state, group):
        beta1, beta2 = group["betas"]
        lion_update(p.data, g, state["exp_avg"], float(group["lr"]), beta1, beta2,
                    group["weight_decay"])
