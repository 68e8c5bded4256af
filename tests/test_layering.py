"""The package's arrows and bans, read from its source with `ast` (nothing is imported):
ops ↛ nn ↛ models ↛ train/generate (a function body may import upward only where
DEFERRED_UPWARD names the pair); cupy only in backend.py and kernels/cuda/; numba only in
kernels/cpu/ and kernels/cuda/, every jit compiled with cache=True; no pickle, exec or eval; no
torch/transformers.

Each rule is a function from (path, tree) to a list of violations; the last tests plant a
violation in a snippet for every rule, so that a rule that cannot fail is caught too.
"""
import ast
from pathlib import Path

import pytest

import tinygrad_llm

PACKAGE = Path(tinygrad_llm.__file__).resolve().parent
ROOT = PACKAGE.parent


def _module_name(path):
    """tinygrad_llm/ops/shape.py -> ("tinygrad_llm.ops.shape", is_package=False)."""
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def imports(path, tree):
    """(line, absolute module name) for every import in the file; `from a import b` yields both
    a and a.b (b may be a submodule)."""
    name, is_package = _module_name(path)
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _top(module):
    return module.split(".")[0]


def _under(path, *folders):
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


# ---- rules: (path, tree) -> violations -----------------------------------------------------------
BANNED_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "torch", "transformers"}


def no_banned_imports(path, tree):
    return [f"{path}:{line} imports {m}" for line, m in imports(path, tree)
            if _top(m) in BANNED_MODULES]


def _is_exec_or_eval(f):
    """exec / eval called by name, or as builtins.exec (a method such as model.eval() is fine)."""
    if isinstance(f, ast.Name):
        return f.id in ("exec", "eval")
    return (isinstance(f, ast.Attribute) and f.attr in ("exec", "eval")
            and isinstance(f.value, ast.Name) and f.value.id in ("builtins", "__builtins__"))


def no_exec_or_eval(path, tree):
    return [f"{path}:{node.lineno} calls {ast.unparse(node.func)}(" for node in ast.walk(tree)
            if isinstance(node, ast.Call) and _is_exec_or_eval(node.func)]


ALLOWED_HOMES = {                      # a module family -> where it may be imported
    "cupy": ("tinygrad_llm/backend.py", "tinygrad_llm/kernels/cuda"),
    "cupyx": ("tinygrad_llm/backend.py", "tinygrad_llm/kernels/cuda"),
    "numba": ("tinygrad_llm/kernels/cpu", "tinygrad_llm/kernels/cuda"),
}


def imports_in_their_homes(path, tree):
    return [f"{path}:{line} imports {m}, allowed only in {ALLOWED_HOMES[_top(m)]}"
            for line, m in imports(path, tree)
            if _top(m) in ALLOWED_HOMES and not _under(path, *ALLOWED_HOMES[_top(m)])]


LAYERS = {                             # a folder -> the package folders it must not import
    "tinygrad_llm/ops": ("nn", "models", "train", "generate", "optim", "quant", "finetune",
                         "eval"),
    "tinygrad_llm/kernels": ("nn", "models", "train", "generate", "optim", "quant", "finetune",
                             "eval"),
    "tinygrad_llm/quant": ("train", "generate", "finetune", "eval"),
    "tinygrad_llm/nn": ("models", "train", "generate", "finetune", "eval"),
    "tinygrad_llm/models": ("train", "generate", "finetune", "eval"),
    "tinygrad_llm/generate": ("finetune", "eval"),
    "tinygrad_llm/finetune": ("eval",),
}


# (file, package above it) that a function body may import at call time, each one a decision: the
# file still loads without that package. GPT.generate is generate(model, ...), defined where a
# user looks for it; TransformerXL.generate samples with generate/sampling.py.
DEFERRED_UPWARD = {("tinygrad_llm/models/gpt.py", "tinygrad_llm.generate"),
                   ("tinygrad_llm/models/transformer_xl.py", "tinygrad_llm.generate")}


def _lines_in_functions(tree):
    """Line numbers of the imports inside a function body (run at call time, not at import)."""
    return {inner.lineno for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for inner in ast.walk(node) if isinstance(inner, (ast.Import, ast.ImportFrom))}


def arrows_point_down(path, tree):
    bad = []
    deferred = _lines_in_functions(tree)
    for folder, above in LAYERS.items():
        if _under(path, folder):
            for line, m in imports(path, tree):
                parts = m.split(".")
                if line in deferred and (path, ".".join(parts[:2])) in DEFERRED_UPWARD:
                    continue
                if parts[0] == "tinygrad_llm" and len(parts) > 1 and parts[1] in above:
                    bad.append(f"{path}:{line} imports {m}: {folder} must not depend on it")
    return bad


JITS = {"jit", "njit", "vectorize", "guvectorize", "cfunc"}


def _numba_names(tree):
    """Local names bound to numba's jit decorators, and names bound to the numba module."""
    funcs, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "numba" and not node.level:
            funcs |= {a.asname or a.name for a in node.names if a.name in JITS}
            modules |= {a.asname or a.name for a in node.names if a.name == "cuda"}  # cuda.jit
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name == "numba"}
    return funcs, modules


def _is_numba_jit(node, funcs, modules):
    if isinstance(node, ast.Name):
        return node.id in funcs
    return (isinstance(node, ast.Attribute) and node.attr in JITS
            and isinstance(node.value, ast.Name) and node.value.id in modules)


def _has_cache_true(call):
    return any(k.arg == "cache" and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def numba_jits_cache(path, tree):
    funcs, modules = _numba_names(tree)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):     # bare @njit
            bad += [f"{path}:{d.lineno} @{ast.unparse(d)} without cache=True"
                    for d in node.decorator_list if _is_numba_jit(d, funcs, modules)]
        if isinstance(node, ast.Call) and _is_numba_jit(node.func, funcs, modules):
            device_function = any(k.arg == "device" for k in node.keywords)  # inlined into kernels
            if not _has_cache_true(node) and not device_function:
                bad.append(f"{path}:{node.lineno} {ast.unparse(node)} without cache=True")
    return bad


RULES = [no_banned_imports, no_exec_or_eval, imports_in_their_homes, arrows_point_down,
         numba_jits_cache]


def package_sources():
    return [(p.relative_to(ROOT).as_posix(), ast.parse(p.read_text(), filename=str(p)))
            for p in sorted(PACKAGE.rglob("*.py"))]


SOURCES = package_sources()


def test_the_walk_sees_the_package():
    paths = {p for p, _ in SOURCES}
    assert {"tinygrad_llm/tensor.py", "tinygrad_llm/backend.py",
            "tinygrad_llm/ops/elementwise.py", "tinygrad_llm/nn/functional.py"} <= paths


@pytest.mark.parametrize("rule", RULES, ids=[r.__name__ for r in RULES])
def test_package_follows_rule(rule):
    violations = [v for path, tree in SOURCES for v in rule(path, tree)]
    assert not violations, "\n".join(violations)


# ---- every rule fails on a planted violation and passes the allowed form -------------------------
PLANTED = [
    # rule, path, source, should it be flagged
    (no_banned_imports, "tinygrad_llm/models/hf.py", "import pickle", True),
    (no_banned_imports, "tinygrad_llm/train/ckpt.py", "from pickle import loads", True),
    (no_banned_imports, "tinygrad_llm/models/hf.py", "import torch.nn as tnn", True),
    (no_banned_imports, "tinygrad_llm/models/hf.py", "from transformers import AutoModel", True),
    (no_banned_imports, "tinygrad_llm/models/hf.py", "import json", False),
    (no_exec_or_eval, "tinygrad_llm/train/config.py", "exec('x = 1')", True),
    (no_exec_or_eval, "tinygrad_llm/train/config.py", "y = eval('1 + 1')", True),
    (no_exec_or_eval, "tinygrad_llm/train/config.py", "builtins.eval('1')", True),
    (no_exec_or_eval, "tinygrad_llm/train/config.py", "model.eval()", False),
    (imports_in_their_homes, "tinygrad_llm/ops/linalg.py", "import cupy", True),
    (imports_in_their_homes, "tinygrad_llm/tensor.py", "from cupyx import scatter_add", True),
    (imports_in_their_homes, "tinygrad_llm/backend.py", "import cupy", False),
    (imports_in_their_homes, "tinygrad_llm/kernels/cuda/norm.py", "import cupy as cp", False),
    (imports_in_their_homes, "tinygrad_llm/kernels/cuda/norm.py", "from numba import cuda", False),
    (imports_in_their_homes, "tinygrad_llm/quant/linear.py", "from numba import cuda", True),
    (imports_in_their_homes, "tinygrad_llm/ops/norm.py", "from numba import njit", True),
    (imports_in_their_homes, "tinygrad_llm/kernels/cpu/norm.py", "from numba import prange",
     False),
    (arrows_point_down, "tinygrad_llm/ops/norm.py", "from ..nn import functional", True),
    (arrows_point_down, "tinygrad_llm/ops/norm.py", "from .. import nn", True),
    (arrows_point_down, "tinygrad_llm/ops/__init__.py", "from ..models.gpt import GPT", True),
    (arrows_point_down, "tinygrad_llm/ops/norm.py", "import tinygrad_llm.generate", True),
    (arrows_point_down, "tinygrad_llm/nn/layers.py", "from ..train import trainer", True),
    (arrows_point_down, "tinygrad_llm/ops/norm.py", "from ..tensor import Function", False),
    (arrows_point_down, "tinygrad_llm/ops/norm.py", "from .softmax import SoftmaxOp", False),
    (arrows_point_down, "tinygrad_llm/nn/layers.py", "from ..ops import MatMulOp", False),
    (arrows_point_down, "tinygrad_llm/models/gpt.py",
     "def generate(self):\n    from ..generate import generate", False),
    (arrows_point_down, "tinygrad_llm/models/gpt.py", "from ..generate import generate", True),
    (arrows_point_down, "tinygrad_llm/models/gpt.py",
     "def f(self):\n    from ..train import Trainer", True),
    (arrows_point_down, "tinygrad_llm/models/encoder.py",
     "def generate(self):\n    from ..generate import generate", True),
    (numba_jits_cache, "tinygrad_llm/kernels/cpu/a.py",
     "from numba import njit\n@njit\ndef f(x):\n    return x", True),
    (numba_jits_cache, "tinygrad_llm/kernels/cpu/a.py",
     "from numba import njit\n@njit(parallel=True)\ndef f(x):\n    return x", True),
    (numba_jits_cache, "tinygrad_llm/kernels/cpu/a.py",
     "import numba as nb\n@nb.jit(nopython=True, cache=False)\ndef f(x):\n    return x", True),
    (numba_jits_cache, "tinygrad_llm/kernels/cpu/a.py",
     "from numba import njit as fast\ng = fast(lambda x: x)", True),
    (numba_jits_cache, "tinygrad_llm/kernels/cpu/a.py",
     "import numba\n@numba.njit(cache=True, fastmath=False)\ndef f(x):\n    return x", False),
    (numba_jits_cache, "tinygrad_llm/kernels/cuda/a.py",
     "from numba import cuda\n@cuda.jit\ndef f(x):\n    pass", True),
    (numba_jits_cache, "tinygrad_llm/kernels/cuda/a.py",
     "from numba import cuda\n@cuda.jit(cache=True)\ndef f(x):\n    pass", False),
    (numba_jits_cache, "tinygrad_llm/kernels/cuda/a.py",
     "from numba import cuda\n@cuda.jit(device=True)\ndef f(x):\n    return x", False),
    (numba_jits_cache, "tinygrad_llm/kernels/cpu/a.py",
     "from numba import njit\ndef jit(fn):\n    return njit(cache=True)(fn)\n"
     "@jit\ndef f(x):\n    return x", False),
]


@pytest.mark.parametrize("rule,path,source,flagged", [
    pytest.param(*p, id=f"{p[0].__name__}-{i}") for i, p in enumerate(PLANTED)])
def test_rule_catches_a_planted_violation(rule, path, source, flagged):
    assert bool(rule(path, ast.parse(source))) == flagged
