"""examples/in_context.py end to end on tiny settings (two curve models, two few-shot sizes, a
few steps each): the JSON line, in_context.json and its curves, prefix-score grids and few-shot
accuracies; and bad options answered by one OptionError line naming the option."""
import json
import math

import pytest

from tinygrad_llm.train import OptionError

TINY = ["--text_chars=20000", "--block_size=32", "--steps=6", "--checkpoints=3", "--n_embd=16",
        "--n_head=2", "--eval_seqs=4", "--probe_seqs=4", "--synthetic_ids=32",
        "--fewshot_sizes=1x16,1x32", "--fewshot_steps=3", "--fewshot_max_shots=2",
        "--shots=0,1,2", "--fewshot_episodes=8"]


@pytest.fixture
def in_context(load_example):
    return load_example("in_context")


def test_a_tiny_run_writes_its_report(in_context, shakespeare_text, tmp_path, capsys):
    result = in_context.main(TINY + ["--models=attn1,attn2", f"--out_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(result))
    report = json.loads((tmp_path / "in_context.json").read_text())
    assert [r["model"] for r in report["curves"]] == ["attn1", "attn2"]
    for run, layers in zip(report["curves"], (1, 2)):
        assert [p["step"] for p in run["curve"]] == [0, 2, 4, 6]
        for point in run["curve"]:
            grid = point["prefix_scores"]
            assert len(grid) == layers and all(len(row) == 2 for row in grid)
            assert all(0 <= s <= 1 for row in grid for s in row)
            assert point["prefix_max"] == pytest.approx(max(max(r) for r in grid), abs=1e-4)
            assert math.isfinite(point["icl_score"])
            assert point["icl_score"] == pytest.approx(point["loss_late"] - point["loss_early"])
            assert math.isfinite(point["icl_score_mix"])
            assert 0 < point["first_copy_loss"] < 2 * math.log(58 + 32)
        for phase in (run["phase"], run["phase_mix"]):
            assert set(phase) == {"induction_step", "icl_drop_step", "together",
                                  "icl_change_at_onset"}
        assert result[f"{run['model']}_icl_score_mix"] == pytest.approx(
            run["final_icl_score_mix"], abs=1e-4)
        assert result[f"{run['model']}_prefix_max"] == pytest.approx(run["final_prefix_max"],
                                                                     abs=1e-4)
    assert report["shots"] == [0, 1, 2]
    assert [r["size"] for r in report["fewshot"]] == ["1x16", "1x32"]
    for run in report["fewshot"]:
        assert set(run["accuracy"]) == {"recall", "pattern", "modular"}
        assert all(len(a) == 3 and all(0 <= x <= 1 for x in a) for a in run["accuracy"].values())
    assert result["fewshot_1x32_recall"] == [round(a, 3) for a in
                                             report["fewshot"][1]["accuracy"]["recall"]]
    assert "attn2 (" in out and "few-shot greedy exact match" in out


@pytest.mark.parametrize("option, words", [
    ("--shots=0,4", "--shots: 4 shots exceed --fewshot_max_shots=2"),
    ("--models=attn1,attn3", "--models: expected distinct names from"),
    ("--fewshot_sizes=2x20", "--fewshot_sizes: expected sizes like '2x64'"),
    ("--synthetic_mix=1.5", "--synthetic_mix: expected a fraction in [0, 1], got 1.5"),
    ("--icl_band=0.2", "--icl_band: expected a fraction in [0, 0.1), got 0.2"),
    ("--block_size=4000", "--block_size: 4000 tokens do not fit"),
    ("--n_head=3", "--n_embd: 16 is not a multiple of --n_head=3"),
    ("--shots=0,x", "--shots: expected comma-separated ints"),
    ("--no_such_option=1", "no_such_option"),
])
def test_bad_options_are_named(in_context, shakespeare_text, tmp_path, option, words):
    with pytest.raises(OptionError, match=None) as err:
        in_context.main(TINY + [option, f"--out_dir={tmp_path}"])
    assert words in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "in_context.json").exists()         # nothing ran


def test_phase_change_finds_a_planted_jump(in_context):
    prefix = [0.02] * 5 + [0.6] * 5
    icl = [0.0, 0.01, -0.01, 0.0, 0.01, -0.3, -0.31, -0.3, -0.29, -0.3]
    curve = [dict(step=100 * i, prefix_max=p, icl_score=s)
             for i, (p, s) in enumerate(zip(prefix, icl))]
    phase = in_context.phase_change(curve, 0.3)
    assert phase["induction_step"] == 500 and phase["together"]
    assert phase["icl_drop_step"] in (400, 500, 600)
    assert phase["icl_change_at_onset"] == pytest.approx(-0.3 - 0.0, abs=0.02)
    flat = in_context.phase_change([dict(c, prefix_max=0.02) for c in curve], 0.3)
    assert flat["induction_step"] is None and not flat["together"]
    assert flat["icl_change_at_onset"] is None
