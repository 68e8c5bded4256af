"""bench/bench_distributed.py's models, on numbers worked by hand: the ring allreduce's time, the
bucketed projection of a data-parallel step (one bucket, latency only, bandwidth only, overlap
with backward) and the alpha-beta fit on exact synthetic times. Pure functions: no mpiexec.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
MIB = 2 ** 20


@pytest.fixture(scope="module")
def bd():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import bench_distributed
    return bench_distributed


def test_ring_allreduce_time(bd):
    # P = 4: 2 (P - 1) = 6 latencies, 2 (P - 1) / P n = 1.5 n bytes per link
    assert bd.allreduce_time(4, 1000, 1e-6, 0.0) == pytest.approx(6e-6)
    assert bd.allreduce_time(4, 1000, 0.0, 1e-9) == pytest.approx(1.5e-6)
    assert bd.allreduce_time(1, 1000, 1e-6, 1e-9) == 0.0        # one rank sends nothing


def test_one_bucket_latency_only_is_all_exposed(bd):
    # one bucket, ready when backward ends: its whole allreduce shows, 2 (8 - 1) * 10 us
    r = bd.project_step(compute_s=0.3, grad_bytes=MIB, ranks=8, alpha_l=10e-6, beta_l=0.0)
    assert r["comm_s"] == pytest.approx(140e-6)
    assert r["exposed_s"] == pytest.approx(140e-6)
    assert r["step_s"] == pytest.approx(0.3 + 140e-6)
    assert r["efficiency"] == pytest.approx(0.3 / (0.3 + 140e-6))


def test_one_bucket_bandwidth_only(bd):
    # 2 ranks: n bytes per link; 10 MiB at 1 ns/byte
    r = bd.project_step(compute_s=1.0, grad_bytes=10 * MIB, ranks=2, alpha_l=0.0, beta_l=1e-9)
    assert r["exposed_s"] == pytest.approx(10 * MIB * 1e-9)


def test_overlap_hides_all_but_the_last_bucket(bd):
    # 4 buckets of 25 MiB; backward 2 s, a bucket ready every 0.5 s; each allreduce 0.1 s,
    # shorter than the gap: only the last bucket's, after backward ends, is exposed
    beta = 0.1 / (25 * MIB)                                      # 2 ranks: n bytes per link
    r = bd.project_step(compute_s=3.0, grad_bytes=100 * MIB, ranks=2, alpha_l=0.0, beta_l=beta)
    assert r["comm_s"] == pytest.approx(0.4)
    assert r["exposed_s"] == pytest.approx(0.1)
    assert r["step_s"] == pytest.approx(3.1)


def test_communication_longer_than_backward_queues(bd):
    # the same 4 buckets at 1 s each: they queue from the first bucket's ready time (1.5 s),
    # ending at 1.5 + 4 = 5.5 s, 2.5 s after backward ends at 3 s
    beta = 1.0 / (25 * MIB)
    r = bd.project_step(compute_s=3.0, grad_bytes=100 * MIB, ranks=2, alpha_l=0.0, beta_l=beta)
    assert r["exposed_s"] == pytest.approx(2.5)
    assert r["efficiency"] == pytest.approx(3.0 / 5.5)


def test_partial_last_bucket(bd):
    # 30 MiB: a 25 MiB bucket ready at half of backward, then 5 MiB at its end
    beta = 1e-9
    r = bd.project_step(compute_s=3.0, grad_bytes=30 * MIB, ranks=2, alpha_l=0.0, beta_l=beta)
    assert r["comm_s"] == pytest.approx(30 * MIB * beta)
    assert r["exposed_s"] == pytest.approx(5 * MIB * beta)


def test_fit_recovers_exact_alpha_beta(bd):
    sizes = bd.allreduce_sizes(64 * MIB)
    assert sizes[0] == 1024 and sizes[-1] == 64 * MIB and len(sizes) == 9
    alpha, beta = 3e-6, 2.5e-10
    t = [alpha + n * beta for n in sizes]
    a, b, residuals = bd.fit_alpha_beta(sizes, t)
    assert a == pytest.approx(alpha, rel=1e-9)
    assert b == pytest.approx(beta, rel=1e-9)
    assert np.max(np.abs(residuals)) < 1e-9


def test_fit_weights_relative_error(bd):
    # a 10% error on the smallest time moves alpha, not beta, by about that much
    sizes = bd.allreduce_sizes(MIB)
    t = [3e-6 + n * 2.5e-10 for n in sizes]
    t[0] *= 1.1
    a, b, _ = bd.fit_alpha_beta(sizes, t)
    assert b == pytest.approx(2.5e-10, rel=0.05)
    assert 3e-6 < a < 3.6e-6


def test_projection_table_shape(bd):
    links = {"assumed": (bd.ASSUMED_LINK["alpha_l_s"], bd.ASSUMED_LINK["beta_l_s_per_byte"])}
    table = bd.projection(1e12, links)
    assert set(table) == {"6L/384d", "GPT-2 small"}
    gpt2 = table["GPT-2 small"]
    assert gpt2["params"] == 124_439_808 and gpt2["tokens_per_rank"] == 8 * 1024
    assert set(gpt2["by_ranks"]) == set(bd.PROJECTED_RANKS)
    effs = [gpt2["by_ranks"][p]["assumed"]["efficiency"] for p in bd.PROJECTED_RANKS]
    assert all(0 < e <= 1 for e in effs) and effs == sorted(effs, reverse=True)
