"""Tensor and the backward walk.

Reading order: unbroadcast -> the walk's bookkeeping (IndexedGrad; _Gradients: which gradient
arrays may be added into in place) -> Tensor: construction, backward (the walk), properties,
in-place updates, thin method wrappers over the ops in `ops/`. Function (the base of every op)
and grad mode live in function.py, re-exported here, where ops import them.

A Tensor wraps one array (NumPy or CuPy) and remembers the node that made it. `backward()` sorts
the graph once, iteratively (no recursion: deep chains are fine), walks it in reverse topological
order, accumulates gradients as plain arrays, undoes broadcasting in one place, and frees each
node's saved arrays as soon as it is used unless `retain_graph=True`. A version counter on every
tensor (shared with its views) catches in-place changes to arrays an op saved for its backward.
"""
import numpy as np

from . import backend

__all__ = ["Tensor", "Function", "IndexedGrad", "no_grad", "enable_grad", "is_grad_enabled",
           "unbroadcast", "array_of"]


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


# ---- the backward walk's bookkeeping -----------------------------------------------------------
class IndexedGrad:
    """A gradient that is zero except at x[index], where it is `values`: what slicing returns
    from backward. The walk adds it into one buffer per input, so k slices of one tensor (q, k, v
    from a fused projection; an LSTM's time steps) cost one zero-filled array, not k."""
    __slots__ = ("index", "values", "scatter")

    def __init__(self, index, values, scatter=False):
        self.index, self.values, self.scatter = index, values, scatter   # scatter: repeats add


class _Gradients:
    """The gradients one backward() has gathered so far (one array per tensor, keyed by id), and
    which of them may be added into in place.

    Ops return fresh arrays, yet an array can be referenced twice: the caller's cotangent, or a dy
    an op hands on unchanged (AddOp gives its dy to both inputs). Such arrays, and all an op
    returns for a shared dy, are `shared`: never modified in place (a second contribution makes a
    new sum). The zero-filled buffers the walk allocates for IndexedGrads are `owned`: later
    contributions are added into them in place until they are handed to their tensor's backward.
    """
    __slots__ = ("pending", "shared", "owned")

    def __init__(self, root, grad):
        if not root.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad and has no graph")
        xp = backend.array_module(root.data)
        if grad is not None:
            g = xp.asarray(array_of(grad), dtype=root.dtype)
            if g.shape != root.shape:
                raise ValueError(f"backward: grad has shape {g.shape}, expected {root.shape}")
        elif root.data.size == 1:
            g = xp.ones(root.shape, dtype=root.dtype)
        else:
            raise RuntimeError(f"backward: grad can be implicit only for a one-element tensor, "
                               f"this one has shape {root.shape}; pass grad=")
        self.pending = {id(root): g}
        self.shared = set() if grad is None else {id(g)}    # g may be the caller's own array
        self.owned = set()

    def pop(self, t):
        """t's gradient (None when nothing reached t), handed over to t's node."""
        g = self.pending.pop(id(t), None)
        if g is not None:
            self.owned.discard(id(g))       # its backward may hand it on: no longer ours alone
        return g

    def unshared(self, g):
        """g as a leaf's .grad, which later backward() calls add into: a copy if it is shared."""
        return g.copy() if id(g) in self.shared else g

    def add(self, node, g, dxs):
        """Add `dxs`, node.backward's result for the output gradient g, to its inputs'."""
        pending, shared, owned = self.pending, self.shared, self.owned
        g_shared, given = id(g) in shared, set()
        for p, need, dx in zip(node.parents, node.needs_grad,
                               dxs if isinstance(dxs, tuple) else (dxs,)):
            if not need or dx is None:
                continue
            if isinstance(dx, IndexedGrad):
                pending[id(p)] = self._add_indexed(pending.get(id(p)), dx, p)
                continue
            if dx.shape != p.data.shape:
                try:
                    dx = unbroadcast(dx, p.data.shape)
                except ValueError as e:
                    raise ValueError(f"{type(node).__name__}.backward: {e}") from None
            if g_shared or id(dx) in given:     # dx may be g or a view; or one dx for two inputs
                shared.add(id(dx))
            given.add(id(dx))
            prev = pending.get(id(p))
            if prev is None:
                pending[id(p)] = dx
            elif id(prev) in owned:
                prev += dx
            else:
                pending[id(p)] = prev + dx

    def _add_indexed(self, buf, dx, p):
        """buf (p's gradient so far, or None) plus dx, added into buf when the walk owns it."""
        if buf is None or id(buf) not in self.owned:
            new = backend.array_module(dx.values).zeros(p.data.shape, dtype=dx.values.dtype)
            if buf is not None:
                new += buf
            buf = new
            self.owned.add(id(buf))
        if dx.scatter:
            backend.scatter_add(buf, dx.index, dx.values)
        else:
            buf[dx.index] += dx.values
        return buf


def _topological_order(root):
    """Tensors reachable from `root` that need grad, each after all of its inputs (an explicit
    stack, no recursion)."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        t, done = stack.pop()
        if done:                            # all of t's inputs are in order
            order.append(t)
        elif id(t) not in visited:
            visited.add(id(t))
            stack.append((t, True))
            node = t._node
            if node is not None:
                for p in node.parents:
                    if isinstance(p, Tensor) and p.requires_grad and id(p) not in visited:
                        stack.append((p, False))
    return order


def _check_saved(node, out):
    """Raise if node's saved arrays were freed by an earlier backward() or changed in place
    since its forward saved them (`out` is node's output)."""
    if node.freed:
        raise RuntimeError(f"backward: the graph through {type(node).__name__} was already "
                           "freed by an earlier backward(); pass retain_graph=True to the "
                           "first backward() to walk it again")
    for i, version in node.saved_versions:
        t = out if i == -1 else node.parents[i]
        if t._version[0] != version:
            raise RuntimeError(f"backward: a tensor saved by {type(node).__name__} (input {i}, "
                               f"shape {t.shape}) was modified in place after it was saved "
                               f"(version {version} -> {t._version[0]})")


def _hooked_leaf_edges(order):
    """{id(leaf): number of graph edges into it} for the leaves in `order` that have
    post-accumulate-grad hooks. A topological order may visit a leaf long after its last consumer
    (a weight's gradient would wait for the whole rest of backward); backward() finishes a hooked
    leaf as soon as its last consumer's backward has run, so a data-parallel bucket can start its
    allreduce while backward goes on. The leaf's gradient is the same sum either way."""
    hooked = {id(t) for t in order if t._node is None and t._grad_hooks}
    if not hooked:
        return None
    edges = dict.fromkeys(hooked, 0)
    for t in order:
        if t._node is not None:
            for p in t._node.parents:
                if id(p) in hooked:
                    edges[id(p)] += 1
    return edges


def _finish_leaf(t, g):
    """Add a leaf's gradient for this backward into its .grad, then call its hooks."""
    _accumulate(t, g)
    for hook in t._grad_hooks or ():
        hook(t)


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


class _HookHandle:
    """What register_post_accumulate_grad_hook returns: remove() takes the hook off again."""

    def __init__(self, tensor, hook):
        self.tensor, self.hook = tensor, hook

    def remove(self):
        hooks = self.tensor._grad_hooks or ()
        self.tensor._grad_hooks = tuple(h for h in hooks if h is not self.hook) or None


# ---- Tensor -----------------------------------------------------------------------------------
class Tensor:
    """An n-dimensional array with reverse-mode autograd, on "cpu" (NumPy) or "cuda" (CuPy).

    Tensor(data, requires_grad=False, device=None, dtype=None): `data` is an array, a number or a
    (nested) list. Arrays keep their dtype; Python floats become float32. `device` defaults to
    $TINYGRAD_LLM_DEVICE, else "cpu".
    """
    __slots__ = ("data", "grad", "requires_grad", "_node", "_version", "_retains_grad",
                 "_grad_hooks", "__weakref__")
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
        self._grad_hooks = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _wrap(cls, array, requires_grad=False, node=None, version=None):
        """Make a Tensor around an array an op produced (no copies, no checks)."""
        t = object.__new__(cls)
        t.data, t.grad, t._node = array, None, node
        t._version = [0] if version is None else version
        t.requires_grad, t._retains_grad, t._grad_hooks = requires_grad, False, None
        return t

    def requires_grad_(self, requires_grad=True):
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"requires_grad: only floating-point tensors can require gradients, "
                            f"this one is {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        return self

    # ---- autograd ----
    def retain_grad(self):
        """Keep .grad on this non-leaf tensor after backward (leaves always keep theirs)."""
        self._retains_grad = True
        return self

    def register_post_accumulate_grad_hook(self, hook):
        """Call hook(self) each time a backward() has added its gradient to this leaf's .grad
        (every contribution of that backward is in it by then). Distributed data parallel starts
        a bucket's allreduce from here while the rest of backward runs. Returns a handle whose
        remove() unregisters the hook."""
        if self._node is not None:
            raise RuntimeError("register_post_accumulate_grad_hook: only a leaf tensor's .grad "
                               "is accumulated; this tensor was computed by "
                               f"{type(self._node).__name__}")
        if not callable(hook):
            raise TypeError(f"register_post_accumulate_grad_hook: hook must be callable, got "
                            f"{type(hook).__name__}")
        self._grad_hooks = (self._grad_hooks or ()) + (hook,)
        return _HookHandle(self, hook)

    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's .grad that requires grad.

        grad: the cotangent, same shape as self; may be left out only for a one-element tensor.
        retain_graph: keep saved arrays so that the graph can be walked again.
        """
        grads = _Gradients(self, grad)
        order = _topological_order(self)
        waiting = _hooked_leaf_edges(order)
        for t in reversed(order):
            g = grads.pop(t)
            if g is None:                   # no gradient reached t (an op returned None)
                continue
            node = t._node
            if node is None:                # a leaf: every contribution is in g
                _finish_leaf(t, grads.unshared(g))
                continue
            if t._retains_grad:
                _accumulate(t, g.copy())    # g goes on to node's backward, which may return it
            _check_saved(node, t)
            grads.add(node, g, type(node).backward(node, g))
            if waiting:                     # a hooked leaf whose last consumer this was: now
                for p in node.parents:
                    if waiting.get(id(p)) is not None:
                        waiting[id(p)] -= 1
                        if waiting[id(p)] == 0 and (leaf_g := grads.pop(p)) is not None:
                            _finish_leaf(p, grads.unshared(leaf_g))
            if not retain_graph:
                node.saved, node.parents, node.freed = None, (), True

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
        if self.requires_grad and is_grad_enabled():
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

    neg = __neg__

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
        dtype = like.data.dtype if like.data.dtype.kind == "f" else np.asarray(x).dtype
        return Tensor._wrap(xp.full((), x, dtype=dtype))
    if backend.device_of(x) == "cuda" and like.device == "cpu":
        raise ValueError("operand on device cuda mixed with a tensor on cpu; move it with "
                         ".to() first")
    return Tensor._wrap(xp.asarray(backend.to_device(x, like.device)))


def _as_array(data, dtype, device):
    """`data` as an array on `device`: arrays keep their dtype (and are not copied when nothing
    changes), Python floats become float32, `dtype` converts."""
    data = array_of(data)
    if not (hasattr(data, "dtype") and hasattr(data, "shape")):      # numbers and (nested) lists
        data = np.asarray(data)
        if dtype is None and data.dtype.kind == "f":
            dtype = np.float32
    return backend.xp_for(device).asarray(backend.to_device(data, device), dtype=dtype)


# Function and grad mode are defined in function.py, which builds on Tensor; ops import them here
from .function import Function, enable_grad, is_grad_enabled, no_grad  # noqa: E402,F401
from . import ops as _ops  # noqa: E402  (ops import Function and Tensor from this module)
