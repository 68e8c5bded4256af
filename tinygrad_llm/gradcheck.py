"""Finite-difference gradient checking.

`gradcheck(fn, *inputs)` compares the gradients that backward() computes with central differences
of `fn`'s output, in float64. `fn` may return a tensor of any shape: it is contracted with a random
cotangent (a uniform one, as `.sum()` would use, hides gradients sent to the wrong element). Each
element of each input that requires grad is perturbed by +-eps; `directions=` instead checks that
many random directional derivatives, for inputs too large to perturb one element at a time.
"""
import numpy as np

from .backend import array_module, to_numpy
from .tensor import Tensor, enable_grad

__all__ = ["gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """Analytic and numeric gradients disagree; the message says where and by how much."""


def _evaluate(fn, inputs, cotangent):
    out = fn(*inputs)
    return float(np.sum(to_numpy(out.data).astype(np.float64) * cotangent))


def gradcheck(fn, *inputs, eps=1e-6, atol=1e-5, rtol=1e-4, directions=None, seed=0,
              raise_exception=True):
    """Check d fn(*inputs) / d input for every input Tensor with requires_grad.

    inputs: Tensors (float64 for a meaningful check) or other arguments passed through.
    directions: None checks every element; an int checks that many random unit directions.
    Returns True, or raises GradcheckError (returns False with raise_exception=False).
    """
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input Tensor has requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {inputs[i].dtype}; finite differences "
                            "need float64 inputs")
    rng = np.random.default_rng(seed)
    with enable_grad():
        for i in checked:
            inputs[i].grad = None
        out = fn(*inputs)
        cotangent = rng.standard_normal(out.shape)
        out.backward(Tensor(cotangent, device=out.device))
    analytic = {i: (np.zeros(inputs[i].shape) if inputs[i].grad is None
                    else to_numpy(inputs[i].grad.data).astype(np.float64)) for i in checked}

    for i in checked:
        x = inputs[i]
        host = to_numpy(x.data)
        xp_data = x.data

        def f_at(values):
            x.data = array_module(xp_data).asarray(values)
            try:
                return _evaluate(fn, inputs, cotangent)
            finally:
                x.data = xp_data

        if directions is None:
            numeric = np.zeros(host.shape)
            flat = host.reshape(-1)
            for j in range(flat.size):
                plus, minus = flat.copy(), flat.copy()
                plus[j] += eps
                minus[j] -= eps
                numeric.reshape(-1)[j] = (f_at(plus.reshape(host.shape))
                                          - f_at(minus.reshape(host.shape))) / (2 * eps)
            bad = ~np.isclose(analytic[i], numeric, atol=atol, rtol=rtol)
            if bad.any():
                _fail(raise_exception, i, x, analytic[i], numeric, bad)
                return False
        else:
            for d in range(directions):
                u = rng.standard_normal(host.shape)
                u /= np.linalg.norm(u) or 1.0
                numeric = (f_at(host + eps * u) - f_at(host - eps * u)) / (2 * eps)
                predicted = float(np.sum(analytic[i] * u))
                if not np.isclose(predicted, numeric, atol=atol, rtol=rtol):
                    msg = (f"gradcheck: input {i} (shape {x.shape}), random direction {d}: "
                           f"analytic {predicted:.8g} vs numeric {numeric:.8g}")
                    if raise_exception:
                        raise GradcheckError(msg)
                    return False
    return True


def _fail(raise_exception, i, x, analytic, numeric, bad):
    idx = tuple(int(v) for v in np.argwhere(bad)[0])
    err = np.abs(analytic - numeric)
    rel = err / np.maximum(np.abs(numeric), 1e-12)
    msg = (f"gradcheck: input {i} (shape {x.shape}): {int(bad.sum())} of {bad.size} elements "
           f"disagree; first at index {idx}: analytic {analytic[idx]:.8g} vs numeric "
           f"{numeric[idx]:.8g}; max abs error {err.max():.3g}, max rel error {rel.max():.3g}")
    if raise_exception:
        raise GradcheckError(msg)
