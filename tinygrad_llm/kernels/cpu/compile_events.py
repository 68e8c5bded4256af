"""Notice when this process starts compiling a Numba kernel (train/warmup.py starts its helper on
the first one: a run whose kernels all come from the cache compiles nothing and starts nothing).
"""
import contextlib

from numba.core import event


class _FirstCompile(event.Listener):
    def __init__(self, callback):
        self.callback, self.fired = callback, False

    def on_start(self, ev):
        if not self.fired:
            self.fired = True
            self.callback()

    def on_end(self, ev):
        pass


@contextlib.contextmanager
def on_first_compile(callback):
    """Within the block, call callback() once, as the block's first Numba compile starts (in
    the compiling thread, before the compile). callback must not raise."""
    listener = _FirstCompile(callback)
    event.register("numba:compile", listener)
    try:
        yield
    finally:
        event.unregister("numba:compile", listener)
