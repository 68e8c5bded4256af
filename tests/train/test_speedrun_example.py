"""examples/speedrun.py: the pieces resolve to the configs they name (fractions of the run's
steps, multiples of the learning rate), the plan fills the budget from the calibrated step time,
the wall clock cuts a slow run, the summary pairs each piece with the default by seed, a tiny
ablation runs end to end (table, JSON, figure, runs.jsonl, resume), and bad options are one
line with exit status 2."""
import json
import math
import sys

import numpy as np
import pytest

from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.train import OptionError, run_main

TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4",
        "--eval_batches=2", "--curve_points=2", "--calib_steps=1", "--budget_s=0.3"]


@pytest.fixture
def speedrun(load_example):
    return load_example("speedrun")


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("To be, or not to be: that is the question.\n" * 60)
    return path


def _args(speedrun, **kw):
    return speedrun.Args(**{"budget_s": 1.0, "warmup_frac": 0.05, "eval_batches": 2,
                            "curve_points": 2, **kw})


BASE = ({"batch_size": 4, "block_size": 16, "learning_rate": 1e-2},
        {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16})


def test_pieces_resolve_fractions_of_the_run_and_multiples_of_the_lr(speedrun):
    piece = speedrun.Piece("test", train={"optimizer": "muon", "seq_warmup_start": 64},
                           model={"qk_norm": True}, per_step={"seq_warmup_iters": 0.25},
                           per_lr={"embed_lr": 5.0})
    config, model_kw = speedrun.configs_for(piece, *BASE, steps=200, warmup_frac=0.05, seed=7)
    assert (config.max_iters, config.lr_decay_iters, config.warmup_iters) == (200, 200, 10)
    assert config.seq_warmup_iters == 50 and config.seq_warmup_start == 16   # clamped to block
    assert config.embed_lr == pytest.approx(5e-2) and config.optimizer == "muon"
    assert config.seed == 7 and config.out_dir is None
    assert model_kw == {**BASE[1], "qk_norm": True}
    default, _ = speedrun.configs_for(speedrun.PIECES["default"], *BASE, steps=200,
                                      warmup_frac=0.05)
    assert default.optimizer == "adamw" and default.seq_warmup_iters == 0


def test_every_available_piece_builds_and_changes_something(speedrun):
    names = speedrun.chosen_pieces(None)
    assert names[0] == "default" and {"muon", "wsd", "seq_warmup", "batch_warmup",
                                      "recipe"} <= set(names)
    default = speedrun.configs_for(speedrun.PIECES["default"], *BASE, steps=100,
                                   warmup_frac=0.05)
    for name in names[1:]:
        config, model_kw = speedrun.configs_for(speedrun.PIECES[name], *BASE, steps=100,
                                                warmup_frac=0.05)
        assert (config, model_kw) != default, name
        GPTConfig.preset("gpt2", vocab_size=11, **model_kw)   # a valid model config


def test_the_plan_fills_the_budget_from_the_step_time(speedrun):
    model = GPT(GPTConfig.preset("gpt2", vocab_size=11, **BASE[1]))
    ids = np.arange(500) % 11
    args = _args(speedrun)
    steps, predicted = speedrun.plan_steps(speedrun.PIECES["default"], args, BASE,
                                           (0.01, 0.0, model), ids)
    assert steps == 98 and predicted == pytest.approx(0.98)       # 2% margin
    # a warmup's short steps are cheaper: more of them fit the same budget
    ramp = speedrun.Piece("ramp", train={"batch_warmup_start": 1},
                          per_step={"batch_warmup_iters": 0.5})
    more, predicted = speedrun.plan_steps(ramp, args, BASE, (0.01, 0.01 / 64, model), ids)
    assert more > steps and predicted <= 0.98
    assert speedrun.plan_steps(ramp, args, BASE, (0.01, 0.01 / 64, model), ids)[0] == more


def test_the_wall_clock_cuts_a_slow_run(speedrun):
    ticks = iter(range(10 ** 6))                    # each step takes one second
    ids = np.arange(2000) % 11
    val_set = [(ids[None, :16], ids[None, 1:17])]
    run = speedrun.train_run(speedrun.PIECES["default"], _args(speedrun, budget_s=3.0), BASE,
                             10, 5, 11, ids, val_set, clock=lambda: float(next(ticks)))
    assert run["steps"] == 3 and run["planned_steps"] == 10 and not run["finished"]
    assert run["train_s"] == 3.0 and run["tokens"] == 3 * 4 * 16 and run["seed"] == 5
    assert math.isfinite(run["val_loss"]) and run["curve"][-1]["val_loss"] == run["val_loss"]


def test_the_summary_pairs_each_piece_with_the_default_by_seed(speedrun):
    def runs(losses):
        return [dict(seed=s, val_loss=v, steps=10, tokens=100, train_s=1.0, finished=True,
                     diverged=v is None) for s, v in zip((1, 2, 3), losses)]
    default = runs([2.0, 2.2, 2.1])
    row = speedrun.summarise("muon", runs([1.9, 2.0, 2.05]), default)
    diffs = [-0.1, -0.2, -0.05]
    assert row["val_loss"] == pytest.approx(np.mean([1.9, 2.0, 2.05]))
    assert row["spread"] == pytest.approx(np.std([1.9, 2.0, 2.05], ddof=1))
    assert row["delta"] == pytest.approx(np.mean(diffs))
    assert row["delta_err"] == pytest.approx(np.std(diffs, ddof=1) / math.sqrt(3))
    diverged = speedrun.summarise("wsd", runs([None, 2.0, 2.0]), default)
    assert diverged["diverged"] == 1 and diverged["delta"] == pytest.approx(-0.15)
    assert speedrun.summarise("default", default, default)["delta"] is None


def test_a_tiny_ablation_runs_writes_its_report_and_resumes(speedrun, corpus, tmp_path,
                                                          capsys):
    out_dir = tmp_path / "out"
    argv = TINY + [f"--data={corpus}", f"--out_dir={out_dir}", "--pieces=muon,wsd"]
    result = speedrun.main(argv)
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(result))
    assert result["runs"] == result["trained_now"] == 6 and set(result["deltas"]) == {
        "muon", "wsd"}
    report = json.loads((out_dir / "speedrun.json").read_text())
    assert [r["piece"] for r in report["rows"]] == ["default", "muon", "wsd"]
    by = {(r["piece"], r["seed"]): r for r in report["runs"]}
    for (piece, seed), run in by.items():
        assert 0 < run["steps"] <= run["planned_steps"] and math.isfinite(run["val_loss"])
        assert run["tokens"] == run["steps"] * 4 * 16
    for row in report["rows"][1:]:
        diffs = [by[(row["piece"], s)]["val_loss"] - by[("default", s)]["val_loss"]
                 for s in (1337, 1338)]
        assert row["delta"] == pytest.approx(np.mean(diffs))
        assert result["deltas"][row["piece"]] == round(row["delta"], 4)
    header = next(line for line in out.splitlines() if line.lstrip().startswith("piece"))
    assert header.split()[:6] == ["piece", "seeds", "val_loss", "spread", "delta", "delta_err"]
    assert len((out_dir / "runs.jsonl").read_text().splitlines()) == 6
    assert report["png"] is None or (out_dir / "speedrun.png").exists()

    again = speedrun.main(argv)                     # every run read back, nothing trained
    assert again["trained_now"] == 0 and again["deltas"] == result["deltas"]


@pytest.mark.parametrize("argv, message", [
    (["--pieces=muon,fast"], "--pieces: unknown or unavailable piece(s) ['fast']; available: "
                             "default, muon, wsd"),
    (["--max_iters=100"], "--max_iters: set by the time budget here"),
    (["--seeds=0"], "--seeds: expected an int >= 1, got 0"),
    (["--budget_s=-1"], "--budget_s and --warmup_frac: expected > 0"),
])
def test_bad_options_are_one_line_and_exit_2(speedrun, argv, message, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speedrun.py"])
    with pytest.raises(SystemExit) as exit_:
        run_main(speedrun.main, argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_an_unknown_piece_raises_option_error(speedrun):
    with pytest.raises(OptionError, match="available: default, muon, wsd, seq_warmup"):
        speedrun.chosen_pieces("nope")
    assert speedrun.chosen_pieces("wsd,default,wsd") == ["default", "wsd"]
