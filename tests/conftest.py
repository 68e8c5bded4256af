"""Shared fixtures: every test body runs on each device and with both implementations.

`device`: "cpu" and "cuda". With CuPy and a GPU, "cuda" is the GPU (and the test is marked
`gpu`). Without one, "cuda" runs on the strict CuPy stand-in (tests/standin): a guard that the
code keeps its arrays on the device and says what crosses to the host, not a GPU check. The
library's CUDA kernels then run under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set here
before anything imports Numba).
`impl`: "reference" (tl.use_kernels(False)) and "fast" (the registered kernels, where they apply).
`standin`: the stand-in installed for the test, its counters at hand (skips on a real GPU).
Every test starts from tl.manual_seed(0).
"""
import os

import pytest


import standin

HAS_GPU = standin.HAS_GPU
if not HAS_GPU:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import tinygrad_llm as tl  # noqa: E402

_cuda = pytest.param("cuda", marks=[pytest.mark.gpu]) if HAS_GPU else "cuda"


@pytest.fixture(params=["cpu", _cuda])
def device(request):
    if request.param == "cuda" and not HAS_GPU:
        standin.install()
        try:
            yield "cuda"
        finally:
            standin.uninstall()
    else:
        yield request.param


@pytest.fixture
def standin_cuda():
    """The stand-in installed as cupy; yields the module (standin.measure() counts)."""
    if HAS_GPU:
        pytest.skip("the stand-in's budgets are checked where no real GPU is present")
    standin.install()
    try:
        yield standin
    finally:
        standin.uninstall()


@pytest.fixture(params=["reference", "fast"])
def impl(request):
    with tl.use_kernels(request.param == "fast"):
        yield request.param


@pytest.fixture(autouse=True)
def _seed():
    tl.manual_seed(0)


@pytest.fixture(scope="session")
def shakespeare_text():
    """The tiny Shakespeare text from TINYGRAD_LLM_DATA (.ci/run sets it); skips when unset."""
    import os
    from pathlib import Path
    path = os.environ.get("TINYGRAD_LLM_DATA")
    if not path or not Path(path).is_file():
        pytest.skip("TINYGRAD_LLM_DATA does not name the tiny Shakespeare file")
    return Path(path).read_text(encoding="utf-8")


@pytest.fixture
def load_example(monkeypatch):
    """importlib.import_module with examples/ on the path: load_example("nas") is
    examples/nas.py as a module, for the tests of an example's own functions."""
    import importlib
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    return importlib.import_module


def pytest_collection_modifyitems(config, items):
    """Without a GPU, the ("cuda", "fast") combination of the device-parametrised tests is left
    out: there it would run every CUDA kernel under Numba's simulator, whose blocks cost tens of
    milliseconds each (a gradcheck of one layer took minutes). The kernels' parity is tested
    on their own in tests/cuda/, and the stand-in checks the array code with the references
    here. On a GPU every combination runs."""
    if HAS_GPU:
        return
    keep, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("device") == "cuda" and params.get("impl") == "fast":
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
