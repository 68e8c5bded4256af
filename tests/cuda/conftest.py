"""Every test here runs on "cuda": the GPU when one is present, else the CuPy stand-in with the
CUDA kernels under Numba's CUDA simulator (see tests/conftest.py)."""
import pytest

import standin


@pytest.fixture(autouse=True)
def cuda_device():
    if standin.HAS_GPU:
        yield "cuda"
        return
    standin.install()
    try:
        yield "cuda"
    finally:
        standin.uninstall()
