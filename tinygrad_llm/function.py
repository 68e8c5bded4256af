"""Function, the base of every op, and the grad mode that decides whether ops record a graph.

Reading order: grad mode (no_grad, enable_grad) -> Function (forward/backward on arrays; `apply`
runs forward and makes the result a node of the graph) -> the device checks `apply` makes.

An op subclasses Function with forward and backward on arrays (ops/ holds them all); the graph
is the chain of Function instances reachable from a Tensor's `_node`, and `Tensor.backward`
(tensor.py) walks it. `tensor.py` re-exports Function, so ops import it from there.
"""
import contextlib

import numpy as np

from . import backend
from .tensor import Tensor

__all__ = ["Function", "no_grad", "enable_grad", "is_grad_enabled"]

# ---- grad mode ------------------------------------------------------------------------------
_grad_enabled = True


def is_grad_enabled():
    return _grad_enabled


@contextlib.contextmanager
def _grad_mode(enabled):
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, enabled
    try:
        yield
    finally:
        _grad_enabled = previous


def no_grad():
    """Context manager: ops inside record no graph (inference, optimizer updates)."""
    return _grad_mode(False)


def enable_grad():
    """Context manager: turn recording back on inside a no_grad block."""
    return _grad_mode(True)


# ---- Function: one op, and one node of the graph ---------------------------------------------
class Function:
    """Base class of every op. Subclasses define two static methods on arrays:

        forward(ctx, *arrays, **params) -> array
        backward(ctx, dy) -> one gradient array (or None, or an IndexedGrad) per positional input

    `Op.apply(*inputs, **params)` runs forward on the inputs' arrays and, when any input tensor
    requires grad, makes the result a node of the graph. Positional inputs that are not Tensors
    (ids, masks) get no gradient; they are passed through as they are, except that host arrays
    given to an op on the GPU (and host-array keyword tables) are uploaded first. The instance is
    the `ctx`: `ctx.save(...)` keeps arrays for backward, `ctx.needs_grad[i]` says which
    gradients are wanted.
    """

    makes_view = False      # True for ops whose output may be a view of input 0 (reshape, ...)

    def save(self, *arrays):
        self.saved = arrays

    @classmethod
    def apply(cls, *inputs, **params):
        ctx = cls()
        ctx.saved = ()
        arrays, kind, first = [], None, None
        needs = False
        for x in inputs:
            if isinstance(x, Tensor):
                data = x.data
                if kind is None:
                    kind, first = type(data), data
                elif type(data) is not kind and _devices_differ(inputs):
                    _raise_mixed_devices(cls, inputs)
                needs = needs or x.requires_grad
                arrays.append(data)
            else:
                arrays.append(x)
        if kind is not None and kind is not np.ndarray and backend.device_of(first) == "cuda":
            arrays, params = _to_op_device(arrays, params)
        needs = needs and _grad_enabled
        if needs:
            ctx.needs_grad = tuple(isinstance(x, Tensor) and x.requires_grad for x in inputs)
        out = cls.forward(ctx, *arrays, **params)
        if isinstance(out, np.generic):       # NumPy reductions to 0-d give scalars: keep arrays
            out = np.asarray(out)
        version = None                        # a view shares its base's version counter
        if cls.makes_view and backend.array_module(out).may_share_memory(out, arrays[0]):
            version = inputs[0]._version
        if not needs:
            return Tensor._wrap(out, version=version)
        ctx.parents = inputs
        ctx.freed = False
        result = Tensor._wrap(out, True, ctx, version)
        # remember the version of every tensor whose array was saved, to catch in-place edits
        versions = []
        for s in ctx.saved:
            for i, x in enumerate(inputs):
                if isinstance(x, Tensor) and s is x.data:
                    versions.append((i, x._version[0]))
            if s is out:
                versions.append((-1, result._version[0]))
        ctx.saved_versions = versions
        return result

    def __repr__(self):
        return f"<{type(self).__name__}>"


# ---- devices: the checks and uploads apply makes ----------------------------------------------
def _to_op_device(arrays, params):
    """Host arrays given to an op on the GPU (ids, masks, tables) are uploaded, as NumPy ids are
    accepted wherever ids are expected; the transfer is the caller's to avoid in a hot loop."""
    def up(a):
        if isinstance(a, tuple):                                # an index of several arrays
            return tuple(up(e) for e in a)
        return backend.to_device(a, "cuda") if isinstance(a, np.ndarray) else a
    return [up(a) for a in arrays], {k: up(v) for k, v in params.items()}


def _devices_differ(inputs):
    """Array types differ (e.g. ndarray and memmap): are the devices different too?"""
    return len({x.device for x in inputs if isinstance(x, Tensor)}) > 1


def _raise_mixed_devices(op, inputs):
    found = [x.device for x in inputs if isinstance(x, Tensor)]
    raise ValueError(f"{op.__name__}: all tensors of one op must be on one device, got {found}; "
                     "move them with .to(device) first")
