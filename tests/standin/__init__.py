"""A strict stand-in for CuPy, so that every "cuda" code path runs in CI on a machine without a GPU.

It is a leak-and-transfer guard, not GPU verification: the arithmetic is NumPy's, so it proves only
that the library keeps its arrays on the device and says what that costs. Its arrays are not
`numpy.ndarray` and refuse what CuPy's refuse:
- implicit host conversion: `np.asarray(x)` / `__array__`, NumPy ufuncs and functions on them;
- mixing with a host array in an operation, or filling a device array from one (`d[i] = host`);
- reductions return 0-d device arrays, never Python or NumPy scalars.
It is deny-by-default: the module offers only the CuPy names the library uses, and
`tests/test_standin.py` checks each against CuPy's real API list (`cupy_api.json`, read off
cupy-cuda12x 14.2 with `dir()`).

It counts, in `counters` (or per block with `measure()`):
- `syncs`: values brought to the host (`float(x)`, `int(x)`, `bool(x)`, `.item()`, `.get()`,
  `.tolist()`, `cupy.asnumpy`, printing); `d2h_bytes` their size;
- `h2d_bytes`: host data sent to the device (`cupy.asarray(host)`, `.set()`, host index arrays);
- `launches`: array operations that would launch a kernel (views do not), plus the library's own
  CUDA kernels (`tinygrad_llm.kernels.cuda` adds its launches through `count_launch`);
- `upcasts`: float64 arrays made from no float64 input (a default-dtype `zeros`, a NumPy float64
  scalar times a float32 array, a Python float through `asarray`); `upcast_sites` and
  `sync_sites` say where (the innermost library line).

`install()` / `uninstall()` put the modules in `sys.modules` as `cupy` and `cupyx`;
`tests/conftest.py` does it for the `device` fixture's "cuda" case when no GPU is present.

Under Numba's CUDA simulator, device memory is host memory: `__cuda_array_interface__` exposes the
NumPy buffer behind an array so that the library's CUDA kernels run on it in place.
"""
import contextlib
import dataclasses
import sys
import traceback
import types

import numpy as np

__all__ = ["cupy", "cupyx", "ndarray", "counters", "measure", "install", "uninstall",
           "installed", "Counters", "HAS_GPU"]


def _has_gpu():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:       # no CuPy, or no driver / device
        return False


HAS_GPU = _has_gpu()        # a real GPU: the stand-in steps aside and the tests use it


@dataclasses.dataclass
class Counters:
    syncs: int = 0
    d2h_bytes: int = 0
    h2d_bytes: int = 0
    launches: int = 0
    upcasts: int = 0
    upcast_sites: list = dataclasses.field(default_factory=list)
    sync_sites: list = dataclasses.field(default_factory=list)

    def minus(self, before):
        return Counters(self.syncs - before.syncs, self.d2h_bytes - before.d2h_bytes,
                        self.h2d_bytes - before.h2d_bytes, self.launches - before.launches,
                        self.upcasts - before.upcasts,
                        self.upcast_sites[len(before.upcast_sites):],
                        self.sync_sites[len(before.sync_sites):])


counters = Counters()


@contextlib.contextmanager
def measure():
    """Count what the block does: `with measure() as c: ...`, then c.syncs, c.h2d_bytes, ..."""
    before = dataclasses.replace(counters, upcast_sites=list(counters.upcast_sites),
                                 sync_sites=list(counters.sync_sites))
    result = Counters()
    try:
        yield result
    finally:
        delta = counters.minus(before)
        for f in dataclasses.fields(Counters):
            setattr(result, f.name, getattr(delta, f.name))


def _site():
    """The innermost library frame of the current stack (where an upcast was made)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "tinygrad_llm" in frame.filename and "/tests/" not in frame.filename:
            return f"{frame.filename.split('tinygrad_llm/')[-1]}:{frame.lineno} {frame.line}"
    return "outside the library"


def _sync(a):
    counters.syncs += 1
    counters.d2h_bytes += a.nbytes
    counters.sync_sites.append(_site())


def count_launch(n=1):
    counters.launches += n


# ---- the array ----------------------------------------------------------------------------------
_SCALARS = (bool, int, float, complex, np.generic)


def _host_error(what):
    return TypeError(f"Unsupported type <class 'numpy.ndarray'>: {what} mixes a host (NumPy) "
                     "array with a device array; move it with cupy.asarray first")


def _dev(x, what):
    """The NumPy buffer behind a device operand; scalars pass; host arrays and lists raise."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise _host_error(what)
    if isinstance(x, _SCALARS) or x is None:
        return x
    if isinstance(x, (list, tuple)):
        raise TypeError(f"Unsupported type {type(x).__name__}: {what} takes device arrays, not "
                        "Python sequences (CuPy does not convert them implicitly)")
    return x


def _index(i):
    """An index: basic parts pass, device arrays unwrap, host index arrays cost a transfer."""
    if isinstance(i, tuple):
        return tuple(_index(j) for j in i)
    if isinstance(i, ndarray):
        return i._a
    if isinstance(i, np.ndarray):
        counters.h2d_bytes += i.nbytes
        return i
    if isinstance(i, list):
        arr = np.asarray(i)
        counters.h2d_bytes += arr.nbytes
        return arr
    return i


def _is_basic(i):
    parts = i if isinstance(i, tuple) else (i,)
    return all(isinstance(p, (int, np.integer, slice)) or p is None or p is Ellipsis
               for p in parts)


def _float64_inputs(args):
    for a in args:
        if isinstance(a, np.ndarray) and a.dtype == np.float64:
            return True
        if isinstance(a, (list, tuple)) and _float64_inputs(a):
            return True
    return False


def _out(result, raw_inputs=(), launch=True):
    """Wrap a NumPy result as device array(s), counting the launch and any float64 upcast."""
    if isinstance(result, tuple):
        return tuple(_out(r, raw_inputs, launch=False) for r in result)
    if launch:
        counters.launches += 1
    if isinstance(result, np.generic):
        result = np.asarray(result)
    if isinstance(result, np.ndarray):
        if result.dtype == np.float64 and not _float64_inputs(raw_inputs):
            counters.upcasts += 1
            counters.upcast_sites.append(_site())
        return _wrap(result)
    return result


def _wrap(a):
    x = object.__new__(ndarray)
    x._a = a
    return x


def _operand(x, what):
    """Like _dev, but other arguments (axes, shapes, dtypes) pass as they are."""
    if isinstance(x, (ndarray, np.ndarray)):
        return _dev(x, what)
    return x


def _method_reducer(name):
    def method(self, *args, **kwargs):
        args = tuple(_operand(a, name) for a in args)
        kwargs = {k: _operand(v, name) for k, v in kwargs.items()}
        return _out(getattr(self._a, name)(*args, **kwargs), (self._a,))
    method.__name__ = name
    return method


def _binary(fn, reflected=False):
    def op(self, other):
        o = _dev(other, fn.__name__)
        a, b = (o, self._a) if reflected else (self._a, o)
        return _out(fn(a, b), (self._a, o))
    return op


def _inplace(fn):
    def op(self, other):
        o = _dev(other, fn.__name__)
        before = self._a.dtype
        fn(self._a, o, out=self._a, casting="same_kind")
        counters.launches += 1
        assert self._a.dtype == before
        return self
    return op


class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.flags.owndata

    def __getitem__(self, key):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[key]


class _MemoryPointer:
    def __init__(self, a):
        self.ptr = a.__array_interface__["data"][0]


class _Device:
    id = 0

    def __repr__(self):
        return "<CUDA Device 0 (stand-in)>"


class ndarray:
    """A device array. Make one with the module's functions, never with the constructor."""
    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 200
    __hash__ = None

    def __init__(self, *args, **kwargs):
        raise TypeError("stand-in cupy.ndarray: make arrays with cupy.asarray/zeros/empty")

    # -- refused: implicit host conversion, NumPy functions on device arrays --
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise TypeError(f"NumPy ufunc {ufunc.__name__} called on a device array: use cupy's")

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"NumPy function {func.__name__} called on a device array: use cupy's")

    # -- metadata (no sync) --
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: _Flags(self._a))
    device = property(lambda self: _Device())
    T = property(lambda self: _wrap(self._a.T))
    base = property(lambda self: None if self._a.base is None else _wrap(self._a.base))
    # CuPy's .data is a MemoryPointer, not the array: code that reads `getattr(x, "data", x)`
    # to unwrap a Tensor gets a pointer here, as it would on a GPU
    data = property(lambda self: _MemoryPointer(self._a))

    @property
    def __cuda_array_interface__(self):
        a = self._a
        return {"shape": a.shape, "typestr": a.dtype.str, "version": 3,
                "data": (a.__array_interface__["data"][0], False),
                "strides": None if a.flags.c_contiguous else a.strides}

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        for i in range(len(self._a)):
            yield self[i]

    # -- values brought to the host: each one a sync --
    def get(self, stream=None, order="C", out=None):
        _sync(self._a)
        return np.array(self._a, order=order)

    def item(self):
        _sync(self._a)
        return self._a.item()

    def tolist(self):
        _sync(self._a)
        return self._a.tolist()

    def __float__(self):
        _sync(self._a)
        return float(self._a)

    def __int__(self):
        _sync(self._a)
        return int(self._a)

    def __bool__(self):
        _sync(self._a)
        return bool(self._a)

    def __complex__(self):
        _sync(self._a)
        return complex(self._a)

    def __repr__(self):
        _sync(self._a)
        return repr(self._a).replace("array(", "array(", 1)

    __str__ = __repr__

    def set(self, arr, stream=None):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"set: expected a numpy.ndarray, got {type(arr).__name__}")
        counters.h2d_bytes += arr.nbytes
        self._a[...] = arr

    # -- indexing --
    def __getitem__(self, index):
        i = _index(index)
        r = self._a[i]
        return _out(r, (self._a,), launch=not _is_basic(index))

    def __setitem__(self, index, value):
        if isinstance(value, np.ndarray):
            raise _host_error("__setitem__ (a host array assigned into a device array)")
        if isinstance(value, (list, tuple)):
            raise TypeError("__setitem__: a Python sequence assigned into a device array; "
                            "make it a device array first")
        self._a[_index(index)] = _dev(value, "__setitem__")
        counters.launches += 1

    # -- views and copies --
    def reshape(self, *shape, order="C"):
        r = self._a.reshape(*shape, order=order)
        return _out(r, (self._a,), launch=not np.shares_memory(r, self._a))

    def view(self, dtype=None):
        return _wrap(self._a.view(dtype) if dtype is not None else self._a.view())

    def ravel(self, order="C"):
        return self.reshape(-1, order=order)

    def transpose(self, *axes):
        return _wrap(self._a.transpose(*axes))

    def swapaxes(self, a, b):
        return _wrap(self._a.swapaxes(a, b))

    def squeeze(self, axis=None):
        return _wrap(self._a.squeeze(axis))

    def astype(self, dtype, order="K", copy=True):
        if not copy and np.dtype(dtype) == self._a.dtype:
            return self
        return _out(self._a.astype(dtype, order=order), (self._a,))

    def copy(self, order="C"):
        return _out(self._a.copy(order=order), (self._a,))

    flatten = copy

    def fill(self, value):
        self._a.fill(_dev(value, "fill"))
        counters.launches += 1

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __abs__(self):
        return _out(np.abs(self._a), (self._a,))

    def __neg__(self):
        return _out(-self._a, (self._a,))

    def __pos__(self):
        return self

    def __invert__(self):
        return _out(~self._a, (self._a,))


for _name in ("sum", "mean", "max", "min", "argmax", "argmin", "var", "std", "prod", "cumsum",
              "all", "any", "clip", "take", "repeat", "argsort", "dot", "nonzero", "round"):
    setattr(ndarray, _name, _method_reducer(_name))


def _sort(self, axis=-1):
    self._a.sort(axis=axis)
    counters.launches += 1


ndarray.sort = _sort

for _name, _fn in [("add", np.add), ("sub", np.subtract), ("mul", np.multiply),
                   ("truediv", np.true_divide), ("floordiv", np.floor_divide), ("mod", np.mod),
                   ("pow", np.power), ("matmul", np.matmul), ("and", np.bitwise_and),
                   ("or", np.bitwise_or), ("xor", np.bitwise_xor),
                   ("lshift", np.left_shift), ("rshift", np.right_shift)]:
    setattr(ndarray, f"__{_name}__", _binary(_fn))
    setattr(ndarray, f"__r{_name}__", _binary(_fn, reflected=True))
    if _name != "matmul":
        setattr(ndarray, f"__i{_name}__", _inplace(_fn))
for _name, _fn in [("lt", np.less), ("le", np.less_equal), ("gt", np.greater),
                   ("ge", np.greater_equal), ("eq", np.equal), ("ne", np.not_equal)]:
    setattr(ndarray, f"__{_name}__", _binary(_fn))


# ---- the module ---------------------------------------------------------------------------------
def _function(name, fn):
    """A cupy function over device arrays (lists of them where the NumPy function takes one)."""
    def f(*args, **kwargs):
        def unwrap(x):
            if isinstance(x, (list, tuple)) and any(isinstance(e, (ndarray, np.ndarray))
                                                    for e in x):
                return [_dev(e, name) for e in x]
            if isinstance(x, (list, tuple)):
                return x            # shapes, axes
            return _dev(x, name)
        args = [unwrap(a) for a in args]
        kwargs = {k: (v if k in ("dtype", "axis", "axes", "shape") else unwrap(v))
                  for k, v in kwargs.items()}
        if isinstance(kwargs.get("out"), np.ndarray):
            fn(*args, **kwargs)
            counters.launches += 1
            return None
        return _out(fn(*args, **kwargs), args)
    f.__name__ = name
    return f


def _creation(name, fn):
    def f(*args, **kwargs):
        return _out(fn(*args, **kwargs), ())
    f.__name__ = name
    return f


def _like(name, fn):
    def f(a, *args, **kwargs):
        return _out(fn(_dev(a, name), *args, **kwargs), (_dev(a, name),))
    f.__name__ = name
    return f


def asarray(a, dtype=None, order=None):
    """A device array: device input as it is (cast/copied only if asked), host input uploaded."""
    if isinstance(a, ndarray):
        if (dtype is None or np.dtype(dtype) == a.dtype) and (
                order in (None, "K", "A") or (order == "C" and a._a.flags.c_contiguous)):
            return a
        return _out(np.asarray(a._a, dtype=dtype, order=order), (a._a,))
    host = np.asarray(a, dtype=dtype, order=order)
    counters.h2d_bytes += host.nbytes
    return _out(host.copy(), (host,) if isinstance(a, np.ndarray) and dtype is None else (),
                launch=False)


def array(a, dtype=None, copy=True, order="K"):
    out = asarray(a, dtype=dtype)
    return out.copy() if copy and out is a else out


def ascontiguousarray(a, dtype=None):
    return asarray(a, dtype=dtype, order="C")


def asnumpy(a, stream=None):
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a)


def get_array_module(*args):
    for a in args:
        if isinstance(a, ndarray):
            return cupy
    return np


def may_share_memory(a, b, max_work=None):
    return isinstance(a, ndarray) and isinstance(b, ndarray) and np.may_share_memory(a._a, b._a)


def shares_memory(a, b, max_work=None):
    return isinstance(a, ndarray) and isinstance(b, ndarray) and np.shares_memory(a._a, b._a)


# ---- cupy.random: NumPy's PCG64 behind a device-array face --------------------------------------
class Generator:
    def __init__(self, bit_generator):
        self._g = np.random.Generator(bit_generator)

    def _draw(self, name, *args, **kwargs):
        return _out(getattr(self._g, name)(*args, **kwargs), ())

    def random(self, size=None, dtype=np.float64, out=None):
        return self._draw("random", size, dtype=dtype)

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        return self._draw("standard_normal", size, dtype=dtype)

    def uniform(self, low=0.0, high=1.0, size=None):
        return self._draw("uniform", low, high, size)

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        return self._draw("integers", low, high, size, dtype=dtype, endpoint=endpoint)


def _default_rng(seed=None):
    return Generator(np.random.PCG64(seed))


# ---- cupy.cuda ---------------------------------------------------------------------------------
class _Stream:
    ptr = 0

    def synchronize(self):
        counters.syncs += 1


class _Device0:
    def __init__(self, device=None):
        self.id = 0

    def synchronize(self):
        counters.syncs += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# CuPy returns the name as bytes (the struct's char array), as does the stand-in
_runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda device: {
    "name": b"CuPy stand-in (tests/standin)"})


# ---- cupy._core: the cuBLAS compute type per float dtype (backend.allow_tf32 sets float32's) ---
# CuPy's own values for its constants; `compute_types` records what the library set, by dtype name
compute_types = {}


def _core_module():
    core = types.ModuleType("cupy._core")
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_TF32 = 1, 7
    core._routines_linalg = linalg

    def set_compute_type(dtype, compute_type):
        compute_types[np.dtype(dtype).name] = compute_type

    def get_compute_type(dtype):
        return compute_types.get(np.dtype(dtype).name, linalg.COMPUTE_TYPE_DEFAULT)

    core.set_compute_type, core.get_compute_type = set_compute_type, get_compute_type
    return core


_ELEMENTWISE = ["abs", "exp", "log", "sqrt", "tanh", "sign", "rint", "isfinite", "isnan",
                "maximum", "minimum", "where", "multiply", "add", "subtract", "divide",
                "copysign", "power", "floor", "log1p", "expm1", "cos", "sin", "clip",
                "logical_and", "logical_or", "logical_not", "equal", "less", "greater"]
_ARRAY_FUNCS = ["concatenate", "stack", "broadcast_to", "take", "take_along_axis", "argsort",
                "argmax", "bincount", "tril", "triu", "matmul", "sum", "cumsum", "sort", "einsum",
                "outer", "nonzero", "flip", "expand_dims", "squeeze", "round", "all", "any",
                "put_along_axis", "repeat", "searchsorted", "unique", "ravel", "count_nonzero",
                "amax", "max", "mean", "pad", "partition", "argpartition"]
_CREATION = ["zeros", "ones", "empty", "full", "arange", "eye", "linspace"]
_LIKE = ["zeros_like", "ones_like", "empty_like", "full_like"]
_PASSTHROUGH = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                "uint16", "uint32", "uint64", "bool_", "dtype", "finfo", "iinfo", "inf", "nan",
                "pi", "e", "newaxis", "integer", "floating", "result_type", "can_cast",
                "promote_types"]


def _build_cupy():
    m = types.ModuleType("cupy", "stand-in CuPy (tests/standin): a leak-and-transfer guard")
    m.__stand_in__ = True
    m.ndarray = ndarray
    for name in _ELEMENTWISE + _ARRAY_FUNCS:
        setattr(m, name, _function(name, getattr(np, name)))
    for name in _CREATION:
        setattr(m, name, _creation(name, getattr(np, name)))
    for name in _LIKE:
        setattr(m, name, _like(name, getattr(np, name)))
    for name in _PASSTHROUGH:
        setattr(m, name, getattr(np, name))
    for fn in (asarray, array, ascontiguousarray, asnumpy, get_array_module, may_share_memory,
               shares_memory):
        setattr(m, fn.__name__, fn)
    m.random = types.ModuleType("cupy.random")
    m.random.default_rng = _default_rng
    m.cuda = types.ModuleType("cupy.cuda")
    m.cuda.runtime = _runtime
    m.cuda.Device = _Device0
    m.cuda.get_current_stream = lambda device=None: _Stream()
    m.cuda.is_available = lambda: True
    m._core = _core_module()
    return m


def _scatter_add(a, slices, value):
    if not isinstance(a, ndarray):
        raise TypeError("cupyx.scatter_add: the target must be a device array")
    np.add.at(a._a, _index(slices), _dev(value, "scatter_add"))
    counters.launches += 1


cupy = _build_cupy()
cupyx = types.ModuleType("cupyx", "stand-in cupyx")
cupyx.__stand_in__ = True
cupyx.scatter_add = _scatter_add

_MODULES = {"cupy": cupy, "cupy.random": cupy.random, "cupy.cuda": cupy.cuda, "cupyx": cupyx}
_saved = {}


def installed():
    return sys.modules.get("cupy") is cupy


def install():
    """Make `import cupy` (and cupyx) give the stand-in, and point the library at it."""
    from tinygrad_llm import backend
    for name, mod in _MODULES.items():
        _saved.setdefault(name, sys.modules.get(name))
        sys.modules[name] = mod
    backend._reset_cuda()


def uninstall():
    from tinygrad_llm import backend
    for name in _MODULES:
        old = _saved.pop(name, None)
        if old is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = old
    backend._reset_cuda()
