"""bench/bench_compile.py's main-job part: it reads the main job's config from the example itself,
and its child process reports the figures the JSON promises. A tiny model on the cache the test
run already holds, so this checks the plumbing, not a timing.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench_compile():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import bench_compile
    return bench_compile


def test_main_job_config_is_the_examples(bench_compile):
    model, train = bench_compile.main_job_defaults()
    assert (model["n_layer"], model["n_head"], model["n_embd"]) == (4, 4, 192)
    assert (train["batch_size"], train["block_size"]) == (16, 128)
    assert train["optimizer"] == "muon" and model["pos"] == "rope"     # the default recipe's


def test_main_job_child_reports_its_figures(bench_compile):
    model = dict(n_layer=1, n_head=2, n_embd=16, dropout=0.0, bias=False)
    train = dict(batch_size=2, block_size=8, max_iters=10, warmup_iters=1)
    proc = subprocess.run([sys.executable, "-c", bench_compile.MAIN_JOB_CHILD,
                           json.dumps([model, train]), "parallel", "sample"], capture_output=True,
                          text=True,
                          env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) == {"import_s", "first_step_s", "start_s", "step_s", "sample_s", "compile_s",
                        "compiles", "float64_compiles"}
    assert 0 < out["import_s"] < out["start_s"] and out["first_step_s"] > 0 and out["sample_s"] > 0
    assert set(out["compile_s"]) == {"first_step", "sample"}
    assert out["float64_compiles"] == 0                 # a float32 run
    # compile seconds are grouped by the kernels/cpu file of the loop that compiled
    assert set(out["compile_s"]["first_step"]) <= {"attention", "norm", "softmax", "activation",
                                                   "embedding", "optim", "_common"}
    for phase, seconds in out["compile_s"].items():
        assert (out["compiles"][phase] == 0) == (seconds == {})


@pytest.mark.parametrize("argv, message", [(["--part=all_of_it"], "--part"),
                                           (["--repeats=0"], "--repeats"),
                                           (["--parts=all"], "unknown option")])
def test_bad_options_are_named(bench_compile, argv, message):
    with pytest.raises(SystemExit, match=message):
        bench_compile.main(argv)
