"""What the bench scripts share to run on "cpu" or "cuda": the --device option, the device
synchronisation that closes a timed region, the device's name, launch counts, PyTorch's side on
the same device, and the child processes each framework runs in.

A GPU call returns once its work is queued, so a timed region on "cuda" is

    sync(); t0 = perf_counter(); work(); sync(); seconds = perf_counter() - t0

after warm-up calls (Numba compiles each CUDA kernel on its first launch, CuPy each elementwise
kernel, cuBLAS picks its algorithms). On the CPU `synchronizer` gives None and the scripts time
as they always have. Launch counts are this library's own CUDA kernels
(`tinygrad_llm.kernels.cuda.launch_count()`): CuPy's array operations and cuBLAS's GEMMs are not
among them.

PyTorch runs on torch.cuda with `torch.cuda.synchronize()` around its timed regions, its SDPA
flash and memory-efficient attention kernels on (its defaults, set explicitly; in float32 SDPA
takes the memory-efficient kernel, flash needs float16/bfloat16) and TF32 off, as our float32
matmuls are full float32. It usually lives in a scratch environment (--torch_python): the
library never depends on it.
"""
import json
import os
import platform
import subprocess
import sys

from tinygrad_llm import backend

__all__ = ["DEVICES", "ROOT", "check", "synchronizer", "launches", "info", "cpu_name",
           "torch_interpreter", "torch_setup", "run_child", "last_lines"]

DEVICES = ("cpu", "cuda")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check(device, ours=True):
    """The --device value, checked; an unknown name or an unusable GPU is one line and exit 2.
    `ours=False` (PyTorch's child process, often in an environment without CuPy) checks only the
    name."""
    if device not in DEVICES:
        print(f"--device: expected one of {DEVICES}, got {device!r}", file=sys.stderr)
        raise SystemExit(2)
    if ours and device == "cuda":
        try:
            backend.check_device("cuda")
        except backend.DeviceUnavailable as e:
            print(f"--device=cuda: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    return device


def synchronizer(device):
    """A function that waits until the device has finished its queued work, or None on the CPU
    (where a call returns when its work is done)."""
    if device == "cpu":
        return None
    return backend.xp_for(device).cuda.Device().synchronize


def launches(device):
    """This library's CUDA kernel launches so far (0 on the CPU)."""
    if device == "cpu":
        return 0
    from tinygrad_llm.kernels.cuda import launch_count
    return launch_count()


def info(device):
    """{"device", "name"}: the GPU's name as CUDA reports it, or the CPU's model."""
    if device == "cpu":
        return {"device": "cpu", "name": cpu_name()}
    try:
        name = backend.xp_for(device).cuda.runtime.getDeviceProperties(0)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as e:       # a driver that cannot answer the query: the timings still stand
        name = f"unknown ({type(e).__name__}: {e})"
    return {"device": device, "name": name}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ---- PyTorch ---------------------------------------------------------------------------------
def torch_interpreter(use_torch, torch_python):
    """The Python that runs PyTorch's side: --torch_python, else this one when torch imports here,
    else None (the side is left out)."""
    if not use_torch:
        return None
    if torch_python:
        return torch_python
    try:
        import torch  # noqa: F401
        return sys.executable
    except ImportError:
        return None


def torch_setup(device):
    """(torch.device, sync or None, facts about the setup) for PyTorch on `device`."""
    import torch
    facts = {"torch": torch.__version__}
    if device == "cpu":
        return torch.device("cpu"), None, facts
    if not torch.cuda.is_available():
        raise SystemExit(f"--device={device}: this PyTorch ({torch.__version__}) sees no CUDA "
                         "device (a CPU-only wheel?)")
    torch.backends.cuda.enable_flash_sdp(True)
    torch.backends.cuda.enable_mem_efficient_sdp(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    facts.update(name=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                 flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                 mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled(), tf32=False)
    return torch.device(device), torch.cuda.synchronize, facts


# ---- child processes -------------------------------------------------------------------------
def run_child(python, script, args, what):
    """Run `python script args` with the repository on PYTHONPATH (PyTorch's interpreter may not
    have tinygrad_llm installed) and return the JSON object on its last stdout line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([python, os.path.abspath(script), *args], capture_output=True,
                         text=True, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"{os.path.basename(script)}: {what} failed "
                           f"(exit {run.returncode}):\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def last_lines(error, n=3):
    """The last n lines of an error's message (a child's traceback ends with its cause)."""
    return " | ".join(str(error).strip().splitlines()[-n:])
