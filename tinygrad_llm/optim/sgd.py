"""Stochastic gradient descent with momentum, Nesterov momentum and L2 weight decay, following
torch.optim.SGD's update (Sutskever et al., 2013 for the momentum forms).

Reading order: the update rule, the reference kernel `sgd_update` (fast versions:
kernels/{cpu,cuda}/optim.py), the SGD class.
"""
from ..backend import array_module
from ..kernels import kernel
from .optimizer import Optimizer, check_number

__all__ = ["SGD", "sgd_update"]


# ---- SGD (torch.optim.SGD's form) ----------------------------------------------------------------
#   d = g + weight_decay * p                       L2 decay, folded into the gradient
#   b = momentum * b + (1 - dampening) * d         (first step: b = d)
#   d = d + momentum * b  (nesterov)   or   d = b
#   p = p - lr * d
# The optimizer starts b at zero and passes dampening = 0 on the first step, which gives b = d
# exactly; momentum = 0 keeps no buffer (b is None). Hyperparameters arrive as Python floats, which
# NumPy keeps in the arrays' dtype (an np.float64 would turn float32 math into float64).
@kernel("sgd_update")   # fast: kernels/cpu/optim.py, kernels/cuda/optim.py
def sgd_update(p, g, b, lr, momentum, dampening, weight_decay, nesterov):
    """One SGD step in place on p (and the momentum buffer b, or None); returns (p, b).
    p, g, b: same shape and dtype; the scalars are Python floats (bools for nesterov)."""
    d = g + weight_decay * p if weight_decay else g
    if b is not None:
        b *= momentum
        b += (1.0 - dampening) * d
        d = d + momentum * b if nesterov else b
    p -= lr * d
    return p, b


class SGD(Optimizer):
    """SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False).

    params: Parameters or param-group dicts. Nesterov needs momentum > 0 and dampening = 0.
    State per parameter (momentum > 0): "momentum_buffer"."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check_group(self, group):
        group["lr"] = check_number("lr", group["lr"])
        group["momentum"] = check_number("momentum", group["momentum"])
        group["dampening"] = check_number("dampening", group["dampening"], 0.0, 1.0)
        group["weight_decay"] = check_number("weight_decay", group["weight_decay"])
        if not isinstance(group["nesterov"], bool):
            raise TypeError(f"nesterov: expected a bool, got {group['nesterov']!r}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"nesterov: needs momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']}, dampening={group['dampening']}")
        return group

    def _state_names(self, group):
        return ("momentum_buffer",) if group["momentum"] else ()     # plain SGD keeps none

    def _update(self, p, g, state, group):
        buffer = state.get("momentum_buffer")
        first = state["step"] == 1
        if group["momentum"] and buffer is None:          # momentum switched on mid-run
            buffer = state["momentum_buffer"] = array_module(p.data).zeros_like(p.data)
            first = True
        # b starts at zero, so dampening 0 on the first step gives torch's b = d exactly
        dampening = 0.0 if first else group["dampening"]
        sgd_update(p.data, g, buffer if group["momentum"] else None, float(group["lr"]),
                   group["momentum"], dampening, group["weight_decay"], group["nesterov"])
