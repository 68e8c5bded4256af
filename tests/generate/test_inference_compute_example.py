"""examples/inference_compute.py end to end at a toy size: it trains its model and reward model,
samples, prints the table and the JSON line, writes the JSON report (and the PNG when
matplotlib is there), and its curves keep the invariants that hold by construction (pass@k grows
with k, a selection from n samples is right only where pass@n is, the training arm starts at the
greedy model). Bad options (k > N, N < 1, no problems, an unknown key) are one named line."""
import json

import numpy as np
import pytest

from tinygrad_llm.train import OptionError, run_main

TINY = ["--problems=6", "--val_problems=5", "--n_samples=4", "--sft_iters=12", "--rm_iters=3",
        "--per_task=120", "--n_layer=1", "--n_embd=32", "--batch_size=4", "--block_size=32",
        "--max_new_tokens=4"]


@pytest.fixture
def example(load_example):
    return load_example("inference_compute")


def test_a_toy_run_writes_its_report(example, tmp_path, capsys):
    result = example.main(TINY + [f"--out_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(result))
    assert "unbiased pass@k from N = 4 samples" in out and "pass@N - vote@N" in out
    report = json.loads((tmp_path / "inference_compute.json").read_text())
    assert result["json"] == str(tmp_path / "inference_compute.json")
    assert report["problems"] == result["problems"] == 6 and result["n_samples"] == 4
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "inference_compute.png").is_file()
    except ImportError:
        assert report["png"] is None

    curves = report["curves"]
    assert [r["n"] for r in curves] == [1, 2, 4]
    keys = ("pass_at_k", "vote", "best_rm", "best_loglik", "best_loglik_mean", "train_greedy")
    for r in curves:
        assert all(0.0 <= r[k] <= 1.0 for k in keys)
        # compute grows with n in proportion: 2 x params x problems x n x tokens per sample
        assert r["flops"] == pytest.approx(2 * report["params"] * 6 * r["n"]
                                           * report["tokens_per_sample"])
        assert r["flops_rm"] > r["flops"]
    assert 1.0 <= report["tokens_per_sample"] <= 4
    pass_k = [report["pass_at_k"][str(k)] for k in (1, 2, 4)]
    assert pass_k == sorted(pass_k)
    assert pass_k[0] == pytest.approx(report["sample_accuracy"])           # pass@1 = c / n
    c = np.array(report["correct_per_problem"])
    assert pass_k[2] == pytest.approx(np.mean(c > 0))                        # pass@N
    top = curves[-1]                      # one block of N: a pick is right only if one sample is
    for key in ("vote", "best_rm", "best_loglik"):
        assert top[key] <= top["pass_at_k"] + 1e-12
    # n = 1: every selection is the sample itself
    assert curves[0]["vote"] == curves[0]["best_rm"] == pytest.approx(pass_k[0])
    # the training arm: no steps at n = 1 (the greedy model), more as n grows
    steps = [t["steps"] for t in report["training"]]
    assert steps[0] == 0 and steps == sorted(steps)
    assert report["training"][0]["greedy_accuracy"] == report["greedy_accuracy"]
    assert 0 <= result["reward_model_pair_accuracy"] <= 1
    rm = report["reward_model"]          # near misses of every training sum, own wrong answers
    assert rm["near_miss_pairs"] == report["train_records"] == 120
    assert 0 <= rm["own_mistake_pairs"] <= 4 * 120
    assert result["vote_saturates_at"] in (None, 1, 2)         # never the last n
    beats = result["sampling_beats_training_at"]              # the n > 1 where a selection wins
    assert set(beats) == {"vote", "best_rm", "best_loglik"}
    for key, ns in beats.items():
        assert ns == [r["n"] for r in curves if r["n"] > 1 and r[key] > r["train_greedy"]]


def test_block_accuracy_averages_disjoint_blocks(example):
    answers = [["1", "2", "1", "1"], ["3", "3", "4", "4"]]
    correct = [{"1": True, "2": False}, {"3": False, "4": True}]
    vote = lambda p, i, j: example.majority_vote(answers[p][i:j])          # noqa: E731
    acc, per_problem = example.block_accuracy(answers, correct, 2, vote)
    # problem 0: blocks (1, 2) -> 1 and (1, 1) -> 1; problem 1: (3, 3) -> 3 and (4, 4) -> 4
    assert per_problem.tolist() == [1.0, 0.5] and acc == 0.75
    assert example.powers_of_two(4) == [1, 2, 4] and example.powers_of_two(6) == [1, 2, 4, 6]


@pytest.mark.parametrize("options, match", [
    (["--n_samples=4", "--ks=1,8"], r"--ks: k=8 exceeds N = --n_samples=4"),
    (["--n_samples=0"], r"--n_samples: expected an int >= 1, got 0"),
    (["--problems=0"], r"--problems: expected an int >= 1, got 0 \(an empty problem list\)"),
    (["--ks=a,b"], r"--ks: expected comma-separated ints"),
    (["--temperature=0"], r"--temperature: sampling needs a temperature > 0"),
    (["--rm_samples=-1"], r"--rm_samples: expected an int >= 0, got -1"),
    (["--n_sample=4"], r"unknown option --n_sample \(did you mean --n_samples\?\)"),
])
def test_bad_options_are_named(example, tmp_path, options, match):
    with pytest.raises(OptionError, match=match):
        example.main(options + [f"--out_dir={tmp_path}"])
    assert not (tmp_path / "inference_compute.json").exists()       # nothing ran


def test_an_option_error_is_one_line_and_exit_status_2(example, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_main(example.main, ["--n_samples=2", "--ks=4"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ks: k=4 exceeds N = --n_samples=2" in err[0]
