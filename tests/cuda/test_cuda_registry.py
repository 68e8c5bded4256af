"""No CUDA kernel lands untested: every name registered for "cuda" has parity cases in one of the
family files here (their CASES tables), or is named below with the test that covers it."""
import importlib
from pathlib import Path

from tinygrad_llm import kernels

TESTED_ELSEWHERE = {}       # name -> test file, for kernels whose parity test is not a CASES table


def _cases():
    names = set()
    for path in sorted(Path(__file__).parent.glob("test_cuda_*.py")):
        if path.stem == "test_cuda_registry":
            continue
        names |= set(getattr(importlib.import_module(path.stem), "CASES", {}))
    return names


def test_every_registered_cuda_kernel_has_parity_cases():
    registered = set(kernels.registered("cuda"))
    missing = registered - _cases() - set(TESTED_ELSEWHERE)
    assert not missing, f"CUDA kernels without parity cases: {sorted(missing)}"
    assert len(registered) >= 15
