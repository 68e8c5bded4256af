"""Adam (Kingma & Ba, 2015) with L2 weight decay, and AdamW (Loshchilov & Hutter, 2019) with
decoupled weight decay, as torch.optim.Adam and torch.optim.AdamW compute them.

Reading order: the update rule, the reference kernel `adam_update` (fast versions:
kernels/{cpu,cuda}/optim.py), Adam, AdamW.
"""
import math

from ..backend import array_module
from ..kernels import kernel
from .optimizer import Optimizer, check_betas, check_number

__all__ = ["Adam", "AdamW", "adam_update"]


# ---- Adam / AdamW --------------------------------------------------------------------------------
#   Adam (L2):        g = g + weight_decay * p
#   AdamW (decoupled): p = p * (1 - lr * weight_decay)
#   m = beta1 * m + (1 - beta1) * g                  first moment
#   v = beta2 * v + (1 - beta2) * g^2                second moment
#   p = p - (lr / c1) * m / (sqrt(v) / sqrt(c2) + eps),   c1 = 1 - beta1^t,  c2 = 1 - beta2^t
# The bias corrections c1, c2 (t = the parameter's step count) are computed once per step by the
# optimizer. Decoupling matters because with L2 the decay is divided by sqrt(v) like the gradient,
# so parameters with large gradients are barely decayed (Loshchilov & Hutter, 2019).
@kernel("adam_update")   # fast: kernels/cpu/optim.py, kernels/cuda/optim.py
def adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled,
                bias_correction1, bias_correction2):
    """One Adam (decoupled=False) or AdamW (decoupled=True) step in place on p, m, v; returns
    (p, m, v). p, g, m, v: same shape and dtype; the scalars are Python floats, which NumPy keeps
    in the arrays' dtype."""
    xp = array_module(p)
    if weight_decay and decoupled:
        p *= 1.0 - lr * weight_decay
    elif weight_decay:
        g = g + weight_decay * p
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * (g * g)
    denom = xp.sqrt(v) / math.sqrt(bias_correction2) + eps
    p -= (lr / bias_correction1) * m / denom
    return p, m, v


class Adam(Optimizer):
    """Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0): L2 weight decay added
    to the gradient, as torch.optim.Adam. State per parameter: "exp_avg" (m), "exp_avg_sq" (v)."""

    decoupled = False        # AdamW overrides: decay the weights directly

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _check_group(self, group):
        group["lr"] = check_number("lr", group["lr"])
        group["betas"] = check_betas(group["betas"])
        group["eps"] = check_number("eps", group["eps"])
        group["weight_decay"] = check_number("weight_decay", group["weight_decay"])
        return group

    def _state_names(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _update(self, p, g, state, group):
        beta1, beta2 = group["betas"]
        t = state["step"]
        adam_update(p.data, g, state["exp_avg"], state["exp_avg_sq"], float(group["lr"]),
                    beta1, beta2, group["eps"], group["weight_decay"], self.decoupled,
                    1.0 - beta1 ** t, 1.0 - beta2 ** t)


class AdamW(Adam):
    """AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01): decoupled weight
    decay p *= 1 - lr * weight_decay, as torch.optim.AdamW."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
