"""Kernel registry and dispatch: the one place that picks a fast path or the readable reference.

A hot function is written once as readable array code in `ops/` and decorated `@kernel("name")`;
that function is the reference. Fast versions live in `kernels/cpu/` (Numba) and `kernels/cuda/`
(Numba's CUDA target, on CuPy arrays) and register with
`@implements("name", device=..., supports=...)`. Calling the decorated function runs the fast
version when kernels are on, one is registered for the arguments' device, and its
`supports(*args, **kwargs)` holds; otherwise the reference runs. There is no fallback on
exceptions: a failing kernel is a bug to surface.

`ran(name)` says which implementation ran last ("cpu", "cuda" or "reference"); `trace()` collects
every dispatch inside a `with` block, so tests can assert that the main job takes the fast path.
"""
import contextlib
import importlib

from ..backend import device_of

__all__ = ["kernel", "implements", "use_kernels", "kernels_enabled", "registered", "ran", "trace",
           "reference"]

_references = {}      # name -> the readable reference function
_fast = {}            # (name, device) -> (function, supports)
_loaded = set()       # devices whose kernel package has been imported
_enabled = True       # the kernel switch: tl.use_kernels(False) forces the references
_last = {}            # name -> "cpu" | "cuda" | "reference": which one ran last
_traces = []          # open trace() lists


def _load(device):
    """Import kernels/<device>/ once; importing registers its implementations."""
    _loaded.add(device)
    importlib.import_module(f"{__name__}.{device}")


def kernel(name):
    """Mark a reference implementation; the returned function dispatches to a fast version."""
    def wrap(reference):
        if name in _references:
            raise ValueError(f"kernel {name!r} is defined twice")
        _references[name] = reference

        def dispatch(*args, **kwargs):
            impl, label = reference, "reference"
            if _enabled:
                device = device_of(args[0])
                if device not in _loaded:
                    _load(device)
                fast = _fast.get((name, device))
                if fast is not None and fast[1](*args, **kwargs):
                    impl, label = fast[0], device
            _last[name] = label
            for t in _traces:
                t.append((name, label))
            return impl(*args, **kwargs)

        dispatch.__name__ = reference.__name__
        dispatch.__qualname__ = reference.__qualname__
        dispatch.__doc__ = reference.__doc__
        dispatch.__wrapped__ = reference
        dispatch.kernel_name = name
        return dispatch
    return wrap


def _always(*args, **kwargs):
    return True


def implements(name, device, supports=_always):
    """Register a fast version of kernel `name` on `device`, used where `supports(*args)` holds."""
    def wrap(fn):
        _fast[(name, device)] = (fn, supports)
        return fn
    return wrap


def use_kernels(enabled=True):
    """Turn the fast kernels on or off everywhere; also usable as `with use_kernels(False): ...`."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)

    @contextlib.contextmanager
    def restore():
        global _enabled
        try:
            yield
        finally:
            _enabled = previous
    return restore()


def kernels_enabled():
    return _enabled


def registered(device="cpu"):
    """Names of the kernels that have a fast version on `device`."""
    if device not in _loaded:
        _load(device)
    return sorted(n for (n, d) in _fast if d == device)


def reference(name):
    """The readable reference function of kernel `name`."""
    return _references[name]


def ran(name):
    """Which implementation of `name` ran last: "cpu", "cuda", "reference", or None."""
    return _last.get(name)


@contextlib.contextmanager
def trace():
    """Record every kernel dispatch inside the block as (name, implementation) pairs."""
    log = []
    _traces.append(log)
    try:
        yield log
    finally:
        _traces.remove(log)
