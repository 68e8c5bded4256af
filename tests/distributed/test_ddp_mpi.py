"""Two ranks under mpiexec against one process: the same losses, evaluations and weights in
float64 (to 1e-12) with and without gradient accumulation, Muon and ZeRO-1; float32 close; ZeRO-1
holding about half the optimizer state per rank; resume under MPI bit-identical to an unbroken
run; a hanging rank stopping the others with one line; and the command line's one-line errors
(no MPI, a world size that does not divide the batch, ranks with different options).

Each test launches `mpiexec -n 2` (MPICH's, from the mpi extra, found next to this Python) on
tests/distributed/ddp_worker.py or the main example; skipped where mpi4py is not installed."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "distributed", "ddp_worker.py")
EXAMPLE = os.path.join(ROOT, "examples", "train_shakespeare.py")
MPIEXEC = (shutil.which("mpiexec", path=os.path.dirname(sys.executable))
           or shutil.which("mpiexec"))
pytestmark = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
                                reason="needs mpi4py and mpiexec (the mpi extra)")
ENV = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
       "OPENBLAS_NUM_THREADS": "1"}


def _run(ranks, args, timeout=240):
    cmd = ([MPIEXEC, "-n", str(ranks)] if ranks > 1 else []) + [sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV,
                          cwd=ROOT)


def _train(tmp_path, ranks, name, steps=4, **settings):
    out = str(tmp_path / name)
    settings = {"steps": steps, "out": out, "out_dir": str(tmp_path / "ckpt"), **settings}
    proc = _run(ranks, [WORKER, json.dumps(settings)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = []
    for rank in range(ranks):
        with open(f"{out}.rank{rank}.json") as f:
            results.append(json.load(f))
    assert len({r["digest"] for r in results}) == 1         # every rank holds the same weights
    return results


def _assert_same_run(one, two, tol):
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=0, atol=tol)
    for split in one["eval"]:
        assert abs(two["eval"][split] - one["eval"][split]) <= tol
    for name, values in one["params"].items():
        np.testing.assert_allclose(two["params"][name], values, rtol=0, atol=tol, err_msg=name)


@pytest.mark.parametrize("grad_accum, optimizer, zero", [
    (1, "adamw", False), (2, "muon", False), (2, "muon", True), (1, "adamw", True)])
def test_two_ranks_match_one_process_in_float64(tmp_path, grad_accum, optimizer, zero):
    train = {"grad_accum": grad_accum, "optimizer": optimizer}
    model = {"qk_norm": True, "mlp": "relu2", "tie_embeddings": False}
    one = _train(tmp_path, 1, "one", float64=True, train=train, model=model)[0]
    two = _train(tmp_path, 2, "two", float64=True, model=model,
                 train={**train, "ddp": True, "zero": zero, "bucket_mb": 0.002})
    assert two[0]["world_size"] == 2
    _assert_same_run(one, two[0], 1e-12)


def _gpus():
    if importlib.util.find_spec("cupy") is None:
        return 0
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:                                      # no driver: no GPU
        return 0


@pytest.mark.gpu
@pytest.mark.skipif(_gpus() < 2, reason="needs two GPUs (NCCL, one per rank)")
@pytest.mark.parametrize("zero", [False, True])
def test_nccl_two_gpus_match_one_gpu(tmp_path, zero):
    train = {"grad_accum": 2, "optimizer": "muon"}
    one = _train(tmp_path, 1, "one", float64=True, device="cuda", train=train)[0]
    two = _train(tmp_path, 2, "two", float64=True, device="cuda",
                 train={**train, "ddp": True, "zero": zero, "bucket_mb": 0.002})
    _assert_same_run(one, two[0], 1e-10)


def test_two_ranks_match_one_process_in_float32(tmp_path):
    one = _train(tmp_path, 1, "one", steps=6)[0]
    two = _train(tmp_path, 2, "two", steps=6, train={"ddp": True})
    difference = max(abs(a - b) for a, b in zip(one["losses"], two[0]["losses"]))
    print(f"float32: largest loss difference over 6 steps {difference:.2e}")
    assert difference < 1e-5


def test_zero_keeps_about_half_the_optimizer_state_per_rank(tmp_path):
    plain = _train(tmp_path, 2, "plain", steps=2, train={"ddp": True})
    zero = _train(tmp_path, 2, "zero", steps=2, train={"ddp": True, "zero": True})
    assert sum(r["state_entries"] for r in zero) == plain[0]["state_entries"]
    assert sum(r["state_bytes"] for r in zero) == plain[0]["state_bytes"]
    for r in zero:
        assert r["state_bytes"] < 0.75 * plain[0]["state_bytes"]


@pytest.mark.parametrize("zero", [False, True])
def test_resume_under_mpi_is_bit_identical(tmp_path, zero):
    train = {"ddp": True, "zero": zero, "optimizer": "muon"}
    unbroken = _train(tmp_path, 2, "unbroken", steps=6, train=train)
    _train(tmp_path, 2, "first", steps=3, train=train, save=True)
    resumed = _train(tmp_path, 2, "resumed", steps=3, train=train, resume=True)
    assert resumed[0]["step"] == 6
    assert resumed[0]["losses"] == unbroken[0]["losses"][3:]
    assert resumed[0]["digest"] == unbroken[0]["digest"]
    assert resumed[0]["eval"] == unbroken[0]["eval"]


def test_a_hanging_rank_stops_every_rank_with_one_line(tmp_path):
    start = time.monotonic()
    proc = _run(2, [WORKER, json.dumps({"steps": 5, "out": str(tmp_path / "hang"),
                                        "fault": "hang",
                                        "train": {"ddp": True, "ddp_timeout_s": 8}})])
    elapsed = time.monotonic() - start
    assert proc.returncode != 0, proc.stderr[-2000:]
    # rank 1 sleeps before its third step: rank 0 waits in that step's gradient allreduce (or,
    # on a loaded machine where startup skews the ranks by more than the timeout, an earlier
    # collective); either way one line names it, and no rank waits out the 120 s sleep
    assert "had no answer from the other ranks in 8 s" in proc.stderr, proc.stderr[-2000:]
    assert elapsed < 80


def test_ranks_with_different_options_get_one_line_each():
    args = [EXAMPLE, "--ddp=true", "--max_iters=2", "--progress=false"]
    cmd = [MPIEXEC, "-n", "1", sys.executable, *args, "--learning_rate=0.001", ":",
           "-n", "1", sys.executable, *args, "--learning_rate=0.002"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=ENV, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert all(line.startswith("train_shakespeare.py: rank 1's configuration differs from "
                               "rank 0's in train_config") for line in lines)


def test_world_size_that_does_not_divide_the_batch():
    proc = _run(2, [EXAMPLE, "--ddp=true", "--batch_size=5", "--max_iters=2",
                    "--progress=false"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "batch_size=5 is not divisible by the world size 2" in proc.stderr


def test_ddp_without_mpi_is_one_line():
    code = ("import runpy, sys; sys.modules['mpi4py'] = None; "
            f"sys.argv = [{EXAMPLE!r}, '--ddp=true', '--max_iters=2']; "
            f"runpy.run_path({EXAMPLE!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=240, env=ENV, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "pip install -e '.[mpi]'" in proc.stderr
