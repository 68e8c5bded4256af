"""examples/nas.py on a tiny study: both searches run under their budgets, the rungs and the
Pareto fronts are what the JSON says, the winners are retrained at equal compute with two seeds,
and bad options (a budget nothing meets, eta < 2) are one line with exit status 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinygrad_llm.train import OptionError
from tinygrad_llm.train.search import pareto_front

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# 4 candidates per search, first rung 2 steps, eta 2: rungs of 4, 2 and 1 at 2, 4 and 8 steps
TINY = ["--quick=true", "--text_chars=20000", "--block_size=16", "--batch_size=4",
        "--n_candidates=4", "--oversample=3", "--min_steps=2", "--eta=2", "--eval_batches=2",
        "--retrain_steps=6", "--decode_tokens=4", "--speed_repeats=1"]


@pytest.fixture
def nas(load_example):
    return load_example("nas")


def test_a_tiny_study_searches_both_budgets_and_retrains_at_equal_compute(
        nas, shakespeare_text, tmp_path, capsys):
    result = nas.main(TINY + [f"--out_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(result))
    report = json.loads((tmp_path / "nas.json").read_text())
    budgets = report["budgets"]
    assert budgets["params"] == report["default"]["params"]          # none: the default's
    assert budgets["tokens_per_s"] == pytest.approx(0.9 * report["default"]["tokens_per_s"])
    for name, key, inside in (("params", "params", lambda v: v <= budgets["params"]),
                              ("latency", "tokens_per_s",
                               lambda v: v >= budgets["tokens_per_s"])):
        search = report["searches"][name]
        assert search["candidates"] and all(inside(c[key]) for c in search["candidates"])
        n = len(search["candidates"])
        assert search["rungs"][0] == list(range(n))
        assert [len(r) for r in search["rungs"]] == [n] + [max(1, len(r) // 2)
                                                           for r in search["rungs"][:-1]]
        for r in search["records"]:
            assert r["steps"] == 2 * 2 ** r["rung"]
        last = [r for r in search["records"] if r["rung"] == len(search["rungs"]) - 1]
        assert search["winner"] == search["candidates"][min(last, key=lambda r: r["loss"])[
            "index"]]["desc"] == result[f"{name}_winner"]
    # the fronts are the non-dominated first-rung points
    rows = report["first_rung"]
    by_params = pareto_front([(r["loss"], r["params"]) for r in rows])
    by_speed = pareto_front([(r["loss"], r["tokens_per_s"]) for r in rows], [False, True])
    assert report["pareto_params"] == [rows[i]["desc"] for i in by_params]
    assert report["pareto_tokens_per_s"] == [rows[i]["desc"] for i in by_speed]
    assert result["pareto_params"] == len(by_params) >= 1
    # equal compute: the winner's steps are the most that the default's FLOPs buy
    tokens = 4 * 16
    for r in report["retrain"]:
        assert r["default_steps"] == 6 and len(r["winner_losses"]) == len(r["default_losses"]) == 2
        winner = next(e for s in report["searches"].values() for e in s["candidates"]
                      if e["desc"] == r["winner"])
        assert r["flops"] == 6 * tokens * report["default"]["flops_per_token"]
        per_step = tokens * winner["flops_per_token"]
        assert r["winner_steps"] * per_step <= r["flops"] < (r["winner_steps"] + 1) * per_step
        assert r["gain"] == pytest.approx(r["default_loss"] - r["winner_loss"])
        assert r["verdict"] == ("inside the error bar" if abs(r["gain"]) < 2 * r["gain_stderr"]
                                else "winner better" if r["gain"] > 0 else "default better")
    if report["png"]:
        assert os.path.getsize(tmp_path / "nas.png") > 0


def test_a_budget_nothing_meets_names_the_budget_and_the_closest_candidate(
        nas, shakespeare_text, tmp_path):
    with pytest.raises(OptionError, match=r"--param_budget: the default 2x48 has [\d,]+ "
                                          r"non-embedding parameters, above the budget 100"):
        nas.main(TINY + ["--param_budget=100", f"--out_dir={tmp_path}"])
    with pytest.raises(OptionError, match=r"--param_budget: no candidate meets the budget "
                                          r"\(<= 4000\); the smallest of the 12 candidates "
                                          r"has \d+"):
        nas.main(TINY + ["--param_budget=4000", "--default_size=1x16", f"--out_dir={tmp_path}"])
    with pytest.raises(OptionError, match=r"--min_tokens_per_s: no candidate meets the budget "
                                          r"\(>= 1e\+09\); the largest of the 12 candidates"):
        nas.main(TINY + ["--min_tokens_per_s=1e9", f"--out_dir={tmp_path}"])
    assert not (tmp_path / "nas.json").exists()


@pytest.mark.parametrize("option, message", [
    ("--eta=1", "--eta: expected an int >= 2, got 1"),
    ("--retrain_seeds=1", "--retrain_seeds: expected an int >= 2, got 1"),
    ("--min_steps=0", "--min_steps: expected an int >= 1, got 0"),
    ("--decode_tokens=64", "--decode_tokens: expected fewer than --block_size=64"),
    ("--default_size=2x50", "--default_size: expected 'LxC' with C a multiple of 16")])
def test_bad_options_are_one_line_and_exit_2(option, message, tmp_path):
    env = {**os.environ, "TINYGRAD_LLM_DATA": "/nonexistent"}     # refused before the data
    run = subprocess.run([sys.executable, str(EXAMPLES / "nas.py"), option,
                          f"--out_dir={tmp_path}", "--text_chars=20000"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.count("\n") == 1 and message in run.stderr
    assert "Traceback" not in run.stderr
