"""The CuPy stand-in itself (tests/standin): deny-by-default against CuPy's real names, as strict
as CuPy about host arrays, and counting what it says it counts. A guard that could not fail
would make every budget asserted with it meaningless."""
import json
from pathlib import Path

import numpy as np
import pytest

import standin

API = json.loads((Path(standin.__file__).parent / "cupy_api.json").read_text())
cp = standin.cupy


def _public(module):
    return {n for n in vars(module) if not n.startswith("_")}


@pytest.mark.parametrize("module,real", [(standin.cupy, "cupy"),
                                         (standin.cupy.random, "cupy.random"),
                                         (standin.cupy.cuda, "cupy.cuda"),
                                         (standin.cupyx, "cupyx")])
def test_every_name_offered_exists_in_cupy(module, real):
    extra = _public(module) - set(API[real]) - {"random", "cuda"}
    assert not extra, f"the stand-in offers names CuPy has not: {sorted(extra)}"


def test_array_methods_exist_in_cupy():
    offered = {n for n in vars(standin.ndarray) if not n.startswith("_")}
    assert offered <= set(API["cupy.ndarray"]), sorted(offered - set(API["cupy.ndarray"]))
    offered = {n for n in vars(standin.Generator) if not n.startswith("_")}
    assert offered <= set(API["cupy.random.Generator"])


def test_a_name_cupy_has_but_the_library_does_not_use_is_refused():
    assert "fft" in API["cupy"]
    with pytest.raises(AttributeError):
        cp.fft


def test_implicit_host_conversions_are_refused():
    x = cp.arange(4, dtype=np.float32)
    assert not isinstance(x, np.ndarray)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    with pytest.raises(TypeError):
        np.exp(x)                                   # a NumPy ufunc on a device array
    with pytest.raises(TypeError):
        np.concatenate([x, x])                      # a NumPy function on a device array
    with pytest.raises(TypeError, match="host"):
        x + np.ones(4, np.float32)                  # mixing with a host array
    with pytest.raises(TypeError, match="host"):
        x[...] = np.ones(4, np.float32)             # filling from a host array
    with pytest.raises(TypeError, match="host"):
        cp.maximum(x, np.zeros(4, np.float32))


def test_numbers_mix_and_reductions_stay_on_the_device():
    x = cp.arange(4, dtype=np.float32)
    y = x * np.float32(2) + 1.5
    assert isinstance(y, cp.ndarray) and y.dtype == np.float32
    s = y.sum()
    assert isinstance(s, cp.ndarray) and s.shape == ()
    assert cp.get_array_module(s) is cp and cp.get_array_module(np.ones(1)) is np


def test_counters_count_syncs_transfers_and_upcasts():
    with standin.measure() as c:
        x = cp.asarray(np.ones((3, 4), np.float32))          # 48 bytes up
        total = float(x.sum())                               # one sync, 4 bytes down
        x.get()                                              # one sync, 48 bytes down
        (x * np.float64(2.0))                                # NumPy 2: float64 scalar upcasts
        cp.zeros(3)                                          # default dtype: float64
        x * 2.0                                              # a Python float does not
    assert total == 12.0
    assert (c.h2d_bytes, c.syncs, c.d2h_bytes) == (48, 2, 52)
    assert c.upcasts == 2 and all("outside" in s or ".py" in s for s in c.upcast_sites)
    assert c.launches >= 4


def test_install_points_the_library_at_the_stand_in():
    import tinygrad_llm as tl
    standin.install()
    try:
        t = tl.Tensor(np.ones(3, np.float32), device="cuda")
        assert isinstance(t.data, standin.ndarray) and t.device == "cuda"
        assert tl.Tensor(t.data).device == "cuda"          # a device array stays on the device
    finally:
        standin.uninstall()
