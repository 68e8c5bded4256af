"""Tensor and the backward walk.

Reading order: grad mode (no_grad) -> Function, the base of every op (forward/backward on arrays,
one node of the graph) -> unbroadcast -> Tensor (construction, properties, the backward walk, then
thin method wrappers over the ops in `ops/`).

A Tensor wraps one array (NumPy or CuPy) and remembers the node that made it. `backward()` sorts
the graph once, iteratively (no recursion: deep chains are fine), walks it in reverse topological
order, accumulates gradients as plain arrays, undoes broadcasting in one place, and frees each
node's saved arrays as soon as it is used unless `retain_graph=True`. A version counter on every
tensor (shared with its views) catches in-place changes to arrays an op saved for its backward.
"""
import contextlib

import numpy as np

from . import backend

__all__ = ["Tensor", "Function", "IndexedGrad", "no_grad", "enable_grad", "is_grad_enabled",
           "unbroadcast", "array_of"]

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
        backward(ctx, dy) -> one gradient array (or None) per positional input

    `Op.apply(*inputs, **params)` runs forward on the inputs' arrays and, when any input tensor
    requires grad, makes the result a node of the graph. Positional inputs that are not Tensors
    (ids, masks) are passed through as they are and get no gradient. The instance is the `ctx`:
    `ctx.save(...)` keeps arrays for backward, `ctx.needs_grad[i]` says which gradients are wanted.
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


def unbroadcast(grad, shape):
    """Sum `grad` down to `shape`, undoing NumPy broadcasting (the one place this is done)."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra < 0:
        raise ValueError(f"unbroadcast: gradient of shape {grad.shape} has fewer dims than {shape}")
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    if grad.shape != tuple(shape):
        raise ValueError(f"unbroadcast: cannot reduce a gradient of shape {grad.shape} to {shape}")
    return grad


# ---- Tensor -----------------------------------------------------------------------------------
_FLOAT_DEFAULT = np.float32


def _as_array(data, dtype, device):
    """`data` as an array on `device`: arrays keep their dtype (and are not copied when nothing
    changes), Python floats become float32, `dtype` converts."""
    if isinstance(data, Tensor):
        data = data.data
    if not (hasattr(data, "dtype") and hasattr(data, "shape")):      # numbers and (nested) lists
        data = np.asarray(data)
        if dtype is None and data.dtype.kind == "f":
            dtype = _FLOAT_DEFAULT
    return backend.xp_for(device).asarray(backend.to_device(data, device), dtype=dtype)


class Tensor:
    """An n-dimensional array with reverse-mode autograd, on "cpu" (NumPy) or "cuda" (CuPy).

    Tensor(data, requires_grad=False, device=None, dtype=None): `data` is an array, a number or a
    (nested) list. Arrays keep their dtype; Python floats become float32. `device` defaults to
    $TINYGRAD_LLM_DEVICE, else "cpu".
    """
    __slots__ = ("data", "grad", "requires_grad", "_node", "_version", "_retains_grad",
                 "__weakref__")
    __array_priority__ = 100        # numpy_array * tensor calls Tensor.__rmul__

    def __init__(self, data, requires_grad=False, device=None, dtype=None):
        if device is None and isinstance(data, Tensor):
            device = data.device
        elif device is None and backend.device_of(data) == "cuda":
            device = "cuda"             # a CuPy array stays where it is
        device = backend.check_device(device)
        self.data = _as_array(data, dtype, device)
        self.grad = None
        self._node = None
        self._version = [0]         # in-place edit counter, one list shared with views
        self._retains_grad = False
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _wrap(cls, array, requires_grad=False, node=None, version=None):
        """Make a Tensor around an array an op produced (no copies, no checks)."""
        t = object.__new__(cls)
        t.data, t.grad, t._node = array, None, node
        t._version = [0] if version is None else version
        t.requires_grad, t._retains_grad = requires_grad, False
        return t

    def requires_grad_(self, requires_grad=True):
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"requires_grad: only floating-point tensors can require gradients, "
                            f"this one is {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        return self

    # ---- properties and conversions ----
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    device = property(lambda self: backend.device_of(self.data))
    is_leaf = property(lambda self: self._node is None)
    grad_fn = property(lambda self: self._node)
    T = property(lambda self: self.transpose())

    def size(self, axis=None):
        return self.data.shape if axis is None else self.data.shape[axis]

    def numel(self):
        return int(self.data.size)

    def __len__(self):
        return len(self.data)

    def numpy(self):
        """The data as a NumPy array (copied from the GPU if needed; shared on the CPU)."""
        return backend.to_numpy(self.data)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item(): only a one-element tensor converts, got shape {self.shape}")
        return self.data.reshape(-1)[0].item()

    def tolist(self):
        return self.numpy().tolist()

    def to(self, device=None, dtype=None):
        """A tensor on `device` and/or of `dtype`; differentiable (gradients flow back)."""
        out = self
        if device is not None and backend.check_device(device) != self.device:
            out = _ops.ToDeviceOp.apply(out, device=backend.check_device(device))
        if dtype is not None and np.dtype(dtype) != self.dtype:
            out = _ops.CastOp.apply(out, dtype=np.dtype(dtype))
        return out

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    def half(self):
        return self.to(dtype=np.float16)

    def astype(self, dtype):
        return self.to(dtype=dtype)

    def detach(self):
        """The same array, cut from the graph (in-place edits to either are seen by both)."""
        return Tensor._wrap(self.data, version=self._version)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = "" if self.device == "cpu" else f", device='{self.device}'"
        return f"Tensor({self.numpy()!r}{dev}{grad})"

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def __hash__(self):
        return id(self)

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous")
        return bool(self.data.reshape(-1)[0])

    # ---- in-place updates: not recorded in the graph; they bump the version counter ----
    def _check_inplace(self, what):
        if _grad_enabled and self.requires_grad:
            raise RuntimeError(f"{what}: in-place change of a tensor that requires grad while "
                               "recording a graph; wrap it in `with no_grad():`")
        self._version[0] += 1

    def _operand(self, other):
        """The array of `other` on this tensor's device (a host array is uploaded, a device one
        brought back, as torch's copy_ does); numbers pass as they are."""
        o = other.data if isinstance(other, Tensor) else other
        if hasattr(o, "shape") and not isinstance(o, np.generic):
            o = backend.to_device(o, self.device)
        return o

    def zero_(self):
        self._check_inplace("zero_")
        self.data[...] = 0
        return self

    def fill_(self, value):
        self._check_inplace("fill_")
        self.data[...] = value
        return self

    def copy_(self, other):
        self._check_inplace("copy_")
        self.data[...] = self._operand(other)
        return self

    def add_(self, other, alpha=1.0):
        self._check_inplace("add_")
        o = self._operand(other)
        self.data += o if alpha == 1.0 else o * alpha
        return self

    def sub_(self, other):
        self._check_inplace("sub_")
        self.data -= self._operand(other)
        return self

    def mul_(self, other):
        self._check_inplace("mul_")
        self.data *= self._operand(other)
        return self

    def div_(self, other):
        self._check_inplace("div_")
        self.data /= self._operand(other)
        return self

    def masked_fill_(self, mask, value):
        self._check_inplace("masked_fill_")
        self.data[self._operand(mask)] = value
        return self

    def __setitem__(self, index, value):
        self._check_inplace("__setitem__")
        self.data[_ops.index_data(index)] = self._operand(value)

    __iadd__, __isub__, __imul__, __itruediv__ = add_, sub_, mul_, div_

    # ---- autograd ----
    def retain_grad(self):
        """Keep .grad on this non-leaf tensor after backward (leaves always keep theirs)."""
        self._retains_grad = True
        return self

    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's .grad that requires grad.

        grad: the cotangent, same shape as self; may be left out only for a one-element tensor.
        retain_graph: keep saved arrays so that the graph can be walked again.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad and has no graph")
        xp = backend.array_module(self.data)
        shared = set()          # ids of gradient arrays that may be referenced twice
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward: grad can be implicit only for a one-element "
                                   f"tensor, this one has shape {self.shape}; pass grad=")
            g = xp.ones(self.shape, dtype=self.dtype)
        else:
            g = xp.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if g.shape != self.shape:
                raise ValueError(f"backward: grad has shape {g.shape}, expected {self.shape}")
            shared.add(id(g))
        grads = {id(self): g}
        owned = set()           # ids of buffers the walk allocated and nothing else references
        for t in reversed(_topological_order(self)):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            owned.discard(id(g))    # handed to backward now: it may pass it on to its inputs
            node = t._node
            if node is None or t._retains_grad:
                _accumulate(t, g.copy() if id(g) in shared or node is not None else g)
                if node is None:
                    continue
            if node.freed:
                raise RuntimeError(f"backward: the graph through {type(node).__name__} was already "
                                   "freed by an earlier backward(); pass retain_graph=True to the "
                                   "first backward() to walk it again")
            _check_versions(node, t)
            dxs = type(node).backward(node, g)
            if not isinstance(dxs, tuple):
                dxs = (dxs,)
            g_shared, given = id(g) in shared, set()
            for p, need, dx in zip(node.parents, node.needs_grad, dxs):
                if not need or dx is None:
                    continue
                if isinstance(dx, IndexedGrad):   # add into one buffer per parent, in place
                    grads[id(p)] = _add_indexed(grads.get(id(p)), dx, p, owned)
                    continue
                if dx.shape != p.data.shape:
                    try:
                        dx = unbroadcast(dx, p.data.shape)
                    except ValueError as e:
                        raise ValueError(f"{type(node).__name__}.backward: {e}") from None
                if g_shared or id(dx) in given:
                    shared.add(id(dx))
                given.add(id(dx))
                prev = grads.get(id(p))
                if prev is None:
                    grads[id(p)] = dx
                elif id(prev) in owned:
                    prev += dx
                else:
                    grads[id(p)] = prev + dx
            if not retain_graph:
                node.saved, node.parents, node.freed = None, (), True

    # ---- op wrappers: see ops/ for the math ----
    def __add__(self, other):
        return _ops.AddOp.apply(self, _lift(other, self))

    def __radd__(self, other):
        return _ops.AddOp.apply(_lift(other, self), self)

    def __sub__(self, other):
        return _ops.SubOp.apply(self, _lift(other, self))

    def __rsub__(self, other):
        return _ops.SubOp.apply(_lift(other, self), self)

    def __mul__(self, other):
        return _ops.MulOp.apply(self, _lift(other, self))

    def __rmul__(self, other):
        return _ops.MulOp.apply(_lift(other, self), self)

    def __truediv__(self, other):
        return _ops.DivOp.apply(self, _lift(other, self))

    def __rtruediv__(self, other):
        return _ops.DivOp.apply(_lift(other, self), self)

    def __neg__(self):
        return _ops.NegOp.apply(self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            return _ops.PowOp.apply(self, exponent)
        return _ops.PowScalarOp.apply(self, exponent=exponent)

    def __rpow__(self, base):
        return _ops.PowOp.apply(_lift(base, self), self)

    def __matmul__(self, other):
        return _ops.MatMulOp.apply(self, _lift(other, self))

    def __rmatmul__(self, other):
        return _ops.MatMulOp.apply(_lift(other, self), self)

    # comparisons give plain (graph-free) bool tensors, for masks
    def __lt__(self, other):
        return Tensor._wrap(self.data < self._operand(other))

    def __le__(self, other):
        return Tensor._wrap(self.data <= self._operand(other))

    def __gt__(self, other):
        return Tensor._wrap(self.data > self._operand(other))

    def __ge__(self, other):
        return Tensor._wrap(self.data >= self._operand(other))

    def eq(self, other):
        return Tensor._wrap(self.data == self._operand(other))

    def neg(self):
        return _ops.NegOp.apply(self)

    def exp(self):
        return _ops.ExpOp.apply(self)

    def log(self):
        return _ops.LogOp.apply(self)

    def sqrt(self):
        return _ops.SqrtOp.apply(self)

    def tanh(self):
        return _ops.TanhOp.apply(self)

    def sigmoid(self):
        return _ops.SigmoidOp.apply(self)

    def relu(self):
        return _ops.ReluOp.apply(self)

    def silu(self):
        return _ops.SiluOp.apply(self)

    def gelu(self, approximate="none"):
        return _ops.GeluOp.apply(self, approximate=approximate)

    def abs(self):
        return _ops.AbsOp.apply(self)

    def clamp(self, min=None, max=None):
        return _ops.ClampOp.apply(self, lo=min, hi=max)

    def softmax(self, axis=-1):
        return _ops.SoftmaxOp.apply(self, axis=axis)

    def log_softmax(self, axis=-1):
        return _ops.LogSoftmaxOp.apply(self, axis=axis)

    def sum(self, axis=None, keepdims=False):
        return _ops.SumOp.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _ops.MeanOp.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return _ops.MaxOp.apply(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        return -_ops.MaxOp.apply(-self, axis=axis, keepdims=keepdims)

    def var(self, axis=None, keepdims=False, correction=0):
        return _ops.VarOp.apply(self, axis=axis, keepdims=keepdims, correction=correction)

    def argmax(self, axis=None, keepdims=False):
        return Tensor._wrap(self.data.argmax(axis=axis, keepdims=keepdims))

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return _ops.ReshapeOp.apply(self, shape=tuple(shape))

    view = reshape

    def flatten(self, start_axis=0, end_axis=-1):
        end = end_axis % self.ndim if self.ndim else 0
        s = self.shape
        return self.reshape(s[:start_axis] + (-1,) + s[end + 1:])

    def transpose(self, *axes):
        """transpose() reverses the axes, transpose(a, b) swaps two, transpose(p0, p1, ...)
        permutes them."""
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        if len(axes) == 2 and self.ndim != 2:
            perm = list(range(self.ndim))
            perm[axes[0]], perm[axes[1]] = perm[axes[1]], perm[axes[0]]
            axes = perm
        return _ops.PermuteOp.apply(self, axes=tuple(axes) if axes else None)

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return _ops.PermuteOp.apply(self, axes=tuple(axes))

    def unsqueeze(self, axis):
        axis = axis if axis >= 0 else axis + self.ndim + 1
        return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])

    def squeeze(self, axis=None):
        if axis is None:
            return self.reshape(tuple(n for n in self.shape if n != 1))
        axis = axis % self.ndim
        if self.shape[axis] != 1:
            return self
        return self.reshape(self.shape[:axis] + self.shape[axis + 1:])

    def expand(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return _ops.ExpandOp.apply(self, shape=tuple(shape))

    def contiguous(self):
        return self

    def __getitem__(self, index):
        return _ops.GetItemOp.apply(self, index=_ops.index_data(index))

    def split(self, split_size_or_sections, axis=0):
        return _ops.split(self, split_size_or_sections, axis)

    def chunk(self, chunks, axis=0):
        n = self.shape[axis]
        return _ops.split(self, -(-n // chunks), axis)

    def masked_fill(self, mask, value):
        return _ops.MaskedFillOp.apply(self, self._operand(mask), value=value)


def array_of(x):
    """The array behind a Tensor, or `x` itself (an array, a list, None). Not getattr(x, "data"):
    a NumPy array's .data is a memoryview and a CuPy array's a device pointer."""
    return x.data if isinstance(x, Tensor) else x


def _lift(x, like):
    """A constant operand (number or array) as a Tensor on `like`'s device, numbers in `like`'s
    float dtype."""
    if isinstance(x, Tensor):
        return x
    xp = backend.array_module(like.data)
    if isinstance(x, (int, float, np.number, np.bool_)):
        # a number (Python's or NumPy's) takes the tensor's float dtype; `full` makes it on the
        # device without a host-to-device copy
        dtype = like.data.dtype if like.data.dtype.kind == "f" else None
        return Tensor._wrap(xp.full((), x, dtype=dtype if dtype is not None else
                                    np.asarray(x).dtype))
    if backend.device_of(x) == "cuda" and like.device == "cpu":
        raise ValueError("operand on device cuda mixed with a tensor on cpu; move it with "
                         ".to() first")
    return Tensor._wrap(xp.asarray(backend.to_device(x, like.device)))


def _topological_order(root):
    """Tensors reachable from `root` that need grad, each after all of its inputs (an explicit
    stack, no recursion)."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        node = t._node
        if node is not None:
            for p in node.parents:
                if isinstance(p, Tensor) and p.requires_grad and id(p) not in visited:
                    stack.append((p, False))
    return order


def _check_versions(node, out):
    for i, version in node.saved_versions:
        t = out if i == -1 else node.parents[i]
        if t._version[0] != version:
            raise RuntimeError(f"backward: a tensor saved by {type(node).__name__} (input {i}, "
                               f"shape {t.shape}) was modified in place after it was saved "
                               f"(version {version} -> {t._version[0]})")


class IndexedGrad:
    """A gradient that is zero except at x[index], where it is `values`: what slicing returns
    from backward. The walk adds it into one buffer per input, so k slices of one tensor (q, k, v
    from a fused projection; an LSTM's time steps) cost one zero-filled array, not k."""
    __slots__ = ("index", "values", "scatter")

    def __init__(self, index, values, scatter=False):
        self.index, self.values, self.scatter = index, values, scatter   # scatter: repeats add


def _add_indexed(buf, dx, parent, owned):
    """buf (the parent's gradient so far, or None) plus dx, reusing buf when the walk owns it."""
    if buf is None or id(buf) not in owned:
        xp = backend.array_module(dx.values)
        new = xp.zeros(parent.data.shape, dtype=dx.values.dtype)
        if buf is not None:
            new += buf
        buf = new
        owned.add(id(buf))
    if dx.scatter:
        backend.scatter_add(buf, dx.index, dx.values)
    else:
        buf[dx.index] += dx.values
    return buf


def _accumulate(t, g):
    if g.dtype != t.data.dtype:
        g = g.astype(t.data.dtype)
    # kernels and optimizers read it flat; asarray(order="C"), unlike ascontiguousarray, keeps
    # a 0-d gradient 0-d
    g = backend.array_module(g).asarray(g, order="C")
    if t.grad is None:
        t.grad = Tensor._wrap(g)
    else:
        t.grad.data += g
        t.grad._version[0] += 1


from . import ops as _ops  # noqa: E402  (ops import Function from this module)
