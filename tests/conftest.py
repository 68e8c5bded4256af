"""Shared fixtures: every test body runs on each device and with both implementations.

`device`: "cpu", and "cuda" (marked `gpu`, skipped unless CuPy imports and finds a GPU).
`impl`: "reference" (tl.use_kernels(False)) and "fast" (the registered kernels, where they apply).
Every test starts from tl.manual_seed(0).
"""
import pytest

import tinygrad_llm as tl


def _has_gpu():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:       # no CuPy, or no driver / device
        return False


HAS_GPU = _has_gpu()
_needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and a GPU")]


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=_needs_gpu)])
def device(request):
    return request.param


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
