"""examples/scaling_laws.py end to end on a tiny sweep: it trains every planned run, writes
runs.jsonl and the JSON report, ends with the JSON line, resumes without retraining, and names
the budget or the shortage when a sweep cannot be fitted. Also: the default grids are as wide as
issue 26 asks (>= 7 sizes over >= 30x in N, >= 4 budgets over >= 30x)."""
import json
import math

import pytest

from tinygrad_llm.train import OptionError
from tinygrad_llm.train.scaling import non_embedding_params


# 3 sizes x 3 budgets of a few steps each; the largest budget is held out of the fits
TINY = ["--text_chars=20000", "--vocab_size=300", "--sizes=1x8,1x16,2x16", "--block_size=16",
        "--batch_size=4", "--min_steps=2", "--eval_batches=2", "--n_boot=4"]
BUDGETS = "--budgets=2e7,4e7,8e7"


@pytest.fixture
def scaling_laws(load_example):
    return load_example("scaling_laws")


def _lines(path):
    return path.read_text().splitlines()


def test_a_tiny_sweep_runs_writes_its_report_and_resumes(scaling_laws, shakespeare_text,
                                                        tmp_path, capsys):
    result = scaling_laws.main(TINY + [BUDGETS, f"--out_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(result))
    runs_file = tmp_path / "runs.jsonl"
    lines = _lines(runs_file)
    assert len(lines) == result["runs"] == result["trained_now"] == 9
    report = json.loads((tmp_path / "scaling_laws.json").read_text())
    runs = report["runs"]
    assert {(r["size"], r["budget"]) for r in runs} == {
        (s, b) for s in ("1x8", "1x16", "2x16") for b in (2e7, 4e7, 8e7)}
    for r in runs:
        assert math.isfinite(r["loss"]) and 0 < r["loss"] < 2 * math.log(300)
        assert r["steps"] >= 2 and r["flops"] <= r["budget"]
        assert r["epochs"] == pytest.approx(r["tokens"] / report["train_tokens"])
    # a bigger model buys fewer steps of the same budget
    at = {r["size"]: r["steps"] for r in runs if r["budget"] == 2e7}
    assert at["1x8"] > at["1x16"] > at["2x16"]
    assert set(report["approach3"]) >= {"E", "A", "B", "alpha", "beta", "a"}
    assert report["held_out"]["budget"] == 8e7
    assert len(report["held_out"]["approach3_rel_errors"]) == 3
    assert "held out 8e+07 FLOPs" in out

    # the second call reads every run back: nothing trains, runs.jsonl does not grow
    again = scaling_laws.main(TINY + [BUDGETS, f"--out_dir={tmp_path}"])
    assert again["trained_now"] == 0 and again["runs"] == 9
    assert _lines(runs_file) == lines
    rerun = json.loads((tmp_path / "scaling_laws.json").read_text())["runs"]
    assert [r["loss"] for r in rerun] == [r["loss"] for r in runs]

    # a run killed while writing its line: that line is skipped and named, and its run (the
    # last one) trains again onto a line of its own
    runs_file.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    capsys.readouterr()
    third = scaling_laws.main(TINY + [BUDGETS, f"--out_dir={tmp_path}"])
    assert "runs.jsonl:9: not a whole JSON line, skipped" in capsys.readouterr().out
    assert third["trained_now"] == 1
    now = _lines(runs_file)
    assert now[:8] == lines[:8] and now[8] == lines[-1][:40] and len(now) == 10
    assert json.loads(now[9])["loss"] == json.loads(lines[-1])["loss"]     # the same run again


def test_a_budget_too_small_for_the_smallest_model_is_named(scaling_laws, shakespeare_text,
                                                            tmp_path):
    with pytest.raises(OptionError, match=r"budget 1000 keeps no run; the smallest size '1x8'"):
        scaling_laws.main(TINY + ["--budgets=1e3,2e7,4e7", f"--out_dir={tmp_path}"])
    assert not (tmp_path / "runs.jsonl").exists()          # nothing trained


def test_too_few_points_to_fit_is_named(scaling_laws, shakespeare_text, tmp_path):
    # two budgets, the larger held out: one budget is left for the fits
    with pytest.raises(OptionError, match=r"too few points to fit: 1 budgets and 3 runs"):
        scaling_laws.main(TINY + ["--budgets=2e7,4e7", f"--out_dir={tmp_path}"])
    with pytest.raises(OptionError, match=r"--holdout: expected 'largest', 'none' or one of"):
        scaling_laws.main(TINY + [BUDGETS, "--holdout=5e7", f"--out_dir={tmp_path}"])


@pytest.mark.parametrize("grid", ["FULL", "QUICK"])
def test_the_default_grids_span_what_the_issue_asks(scaling_laws, grid):
    sizes, budgets = getattr(scaling_laws, grid)
    n = [non_embedding_params(scaling_laws.model_config(s, 512, 64)) for s in sizes.split(",")]
    c = scaling_laws._budgets(budgets)
    assert len(n) >= 7 and max(n) / min(n) >= 30
    assert len(c) >= 4 and c[-1] / c[0] >= 30


def test_a_budget_counts_as_a_valley_only_with_a_nearby_minimum(scaling_laws):
    def runs(losses, n=(1e3, 4e3, 1.6e4)):
        return [dict(params=p, tokens=1e10 / p, loss=l) for p, l in zip(n, losses)]
    assert scaling_laws._has_valley(runs([4.0, 3.8, 4.1]))
    assert scaling_laws._has_valley(runs([3.8, 4.0, 4.3]))     # a minimum just past the edge
    assert not scaling_laws._has_valley(runs([4.0, 4.2, 4.1]))        # a hill
    # nearly straight: the vertex lies far beyond the sizes measured
    assert not scaling_laws._has_valley(runs([4.0, 3.9, 3.8001]))


def test_a_surface_without_an_optimum_has_no_tokens_per_param(scaling_laws):
    fit = dict(E=1.0, A=5.0, B=50.0, alpha=0.3, beta=0.3, a=0.5, b=0.5)
    assert scaling_laws.tokens_per_param(fit, 1e12) > 0
    assert scaling_laws.tokens_per_param({**fit, "alpha": -0.03}, 1e12) is None
