"""Tensor constructors with PyTorch's names: zeros, ones, full, arange, randn, rand, *_like.

Random ones draw from the device's seeded generator (tl.manual_seed), never from np.random.
"""
import numpy as np

from . import backend
from .tensor import Tensor

__all__ = ["tensor", "zeros", "ones", "full", "arange", "randn", "rand", "zeros_like",
           "ones_like"]


def _shape(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape


def _make(array, requires_grad):
    t = Tensor._wrap(array)
    return t.requires_grad_(True) if requires_grad else t


def tensor(data, dtype=None, device=None, requires_grad=False):
    return Tensor(data, requires_grad=requires_grad, device=device, dtype=dtype)


def zeros(*shape, dtype=np.float32, device=None, requires_grad=False):
    xp = backend.xp_for(backend.check_device(device))
    return _make(xp.zeros(_shape(shape), dtype=dtype), requires_grad)


def ones(*shape, dtype=np.float32, device=None, requires_grad=False):
    xp = backend.xp_for(backend.check_device(device))
    return _make(xp.ones(_shape(shape), dtype=dtype), requires_grad)


def full(shape, value, dtype=np.float32, device=None, requires_grad=False):
    xp = backend.xp_for(backend.check_device(device))
    return _make(xp.full(shape, value, dtype=dtype), requires_grad)


def arange(start, stop=None, step=1, dtype=np.int64, device=None):
    xp = backend.xp_for(backend.check_device(device))
    return Tensor._wrap(xp.arange(start, stop, step, dtype=dtype) if stop is not None
                        else xp.arange(start, dtype=dtype))


def randn(*shape, dtype=np.float32, device=None, requires_grad=False):
    """N(0, 1) samples from the device's Philox generator: the same on the CPU and the GPU."""
    device = backend.check_device(device)
    return _make(backend.generator(device).standard_normal(_shape(shape), dtype=dtype),
                 requires_grad)


def rand(*shape, dtype=np.float32, device=None, requires_grad=False):
    """Uniforms in [0, 1) from the device's Philox generator: the same on the CPU and the GPU."""
    device = backend.check_device(device)
    return _make(backend.generator(device).random(_shape(shape), dtype=dtype), requires_grad)


def zeros_like(t, dtype=None, requires_grad=False):
    xp = backend.array_module(t.data)
    return _make(xp.zeros(t.shape, dtype=dtype or t.dtype), requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    xp = backend.array_module(t.data)
    return _make(xp.ones(t.shape, dtype=dtype or t.dtype), requires_grad)
