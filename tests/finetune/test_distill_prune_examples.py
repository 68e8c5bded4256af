"""examples/distill.py and examples/prune.py end to end on a tiny corpus with a tiny teacher that
the examples train themselves (train_shakespeare.py, run as a command): the JSON line, a fair
comparison (alpha=0 distillation is the scratch run exactly), the saved student, sparsities as
requested and kept through recovery, pruning's held-out figures as the harness gives them."""
import json

import numpy as np
import pytest

from tinygrad_llm.data import shakespeare, split
from tinygrad_llm.eval import Task, evaluate
from tinygrad_llm.train import load_model

# a teacher small enough to train in a second: train_shakespeare.py's own overrides
TINY_TEACHER = ["--teacher_iters=3",
                "--teacher_args=--n_layer=1 --n_head=2 --n_embd=32 --block_size=32 "
                "--batch_size=4 --eval_iters=2"]
TINY_STUDENT = ["--max_iters=4", "--batch_size=4", "--block_size=32", "--n_layer=1",
                "--n_head=2", "--n_embd=16", "--eval_iters=2", "--warmup_iters=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, play_corpus):
    with play_corpus(tmp_path_factory.mktemp("distill_prune_example")) as tmp:
        yield tmp


@pytest.fixture(scope="module")
def teacher(corpus):
    """A tiny char model at a path the examples train when missing (the first to run does)."""
    return corpus / "teacher" / "model.safetensors"


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_distill_example(corpus, teacher, capsys):
    import distill
    out = corpus / "student" / "ckpt.safetensors"
    result = distill.main([f"--teacher={teacher}", *TINY_TEACHER, *TINY_STUDENT,
                           "--temperature=2", "--alpha=0.9", f"--out_dir={out.parent}"])
    assert last_json(capsys) == result
    assert teacher.exists()                              # trained, then moved to the path asked
    for key in ("teacher_val_loss", "scratch_val_loss", "distilled_val_loss"):
        assert np.isfinite(result[key]) and result[key] > 0
    assert result["improvement"] == pytest.approx(
        result["scratch_val_loss"] - result["distilled_val_loss"], abs=2e-4)
    assert result["student_parameters"] < result["teacher_parameters"]
    assert result["distilled_val_loss"] != result["scratch_val_loss"]   # the teacher was used
    assert result["scratch_wall_s"] >= 0 and result["distill_wall_s"] >= 0
    held_out = result["held_out"]                        # the harness's figures, per model
    assert set(held_out) == {"teacher", "scratch", "distilled"}
    for figures in held_out.values():
        # one byte per character token (an ASCII corpus): bits per byte = nats per token / ln 2
        assert figures["bits_per_byte"] == pytest.approx(
            figures["nll_per_token"] / np.log(2), abs=2e-3)
        assert figures["perplexity"] == pytest.approx(np.exp(figures["nll_per_token"]), rel=1e-3)
        assert 0 < figures["bits_per_byte_stderr"] < figures["bits_per_byte"]
    assert held_out["distilled"] != held_out["scratch"]
    student, tokenizer, record = load_model(str(out))
    assert student.num_parameters() == result["student_parameters"]
    assert record["distill"]["alpha"] == 0.9 and result["checkpoint"] == str(out)
    assert tokenizer.to_dict() == load_model(str(teacher))[1].to_dict()


def test_distill_with_alpha_0_is_the_scratch_run(corpus, teacher, capsys):
    """Same seed, initialisation, batches and schedule: with no weight on the teacher the
    distilled student must be the scratch student, so the comparison isolates the soft term."""
    import distill
    result = distill.main([f"--teacher={teacher}", *TINY_TEACHER, *TINY_STUDENT, "--alpha=0"])
    assert result["distilled_val_loss"] == result["scratch_val_loss"]
    assert result["improvement"] == 0
    assert result["held_out"]["distilled"] == result["held_out"]["scratch"]


@pytest.mark.parametrize("bad, message", [(["--alpha=1.5"], "alpha"),
                                          (["--block_size=64"], "block_size")])
def test_distill_rejects_bad_arguments(corpus, teacher, bad, message):
    import distill
    with pytest.raises(ValueError, match=message):
        distill.main([f"--teacher={teacher}", *TINY_TEACHER, *TINY_STUDENT, *bad])


def test_prune_example(corpus, teacher, capsys):
    import prune
    capsys.readouterr()
    result = prune.main([f"--model={teacher}", "--model_iters=3",
                         "--model_args=--n_layer=1 --n_head=2 --n_embd=32 --block_size=32 "
                         "--batch_size=4 --eval_iters=2",
                         "--sparsities=0,0.5,0.9", "--batch_size=4", "--block_size=32",
                         "--eval_iters=2", "--max_iters=3", "--learning_rate=1e-2",
                         "--recover_sparsity=0.9",
                         "--recover_scope=global"])
    assert last_json(capsys) == result
    for scope in ("layer", "global"):
        rows = result["curve"][scope]
        assert [r["target"] for r in rows] == [0.0, 0.5, 0.9]
        for r in rows:                                  # measured = requested (up to rounding)
            assert r["sparsity"] == pytest.approx(r["target"], abs=2e-3)
            assert_held_out_figures(r)
    assert result["curve"]["layer"][0]["val_loss"] == result["dense_val_loss"]
    assert result["dense"]["val_loss"] == result["dense_val_loss"]
    assert result["curve"]["layer"][0] == {"target": 0.0, "sparsity": 0.0, **result["dense"]}
    assert result["curve"]["layer"][2]["val_loss"] != result["dense_val_loss"]   # 90% pruned
    assert result["2:4"]["sparsity"] == 0.5
    assert_held_out_figures(result["2:4"])
    # the figures are the harness's on the first eval_iters * batch_size * block_size validation
    # tokens: recomputed here from the dense model
    assert result["held_out_tokens"] == 2 * 4 * 32 + 1
    model, tokenizer, _ = load_model(str(teacher))
    val_ids = split(tokenizer.encode(shakespeare()), 0.1)[1]
    task = Task("held_out", "perplexity",
                [{"text": tokenizer.decode([int(i) for i in val_ids[:2 * 4 * 32 + 1]])}])
    metrics = evaluate(model, tokenizer, [task])["tasks"]["held_out"]["metrics"]
    assert result["dense_val_loss"] == round(metrics["nll_per_token"]["value"], 4)
    assert result["dense"]["bits_per_byte_stderr"] == round(metrics["bits_per_byte"]["stderr"], 4)
    recovery = result["recovery"]
    assert set(recovery) == {"dense (control)", "2:4", "global@0.9"}
    assert recovery["dense (control)"]["val_loss_before"] == result["dense_val_loss"]
    assert recovery["2:4"]["sparsity"] == 0.5                          # kept exactly
    assert recovery["global@0.9"]["sparsity"] == result["curve"]["global"][2]["sparsity"]
    assert recovery["2:4"]["val_loss_before"] == result["2:4"]["val_loss"]
    assert recovery["2:4"]["bits_per_byte_before"] == result["2:4"]["bits_per_byte"]
    for r in recovery.values():
        assert r["steps"] == 3 and r["val_loss_after"] != r["val_loss_before"]
        for when in ("before", "after"):
            assert_held_out_figures({k.replace(f"_{when}", ""): v for k, v in r.items()
                                     if f"_{when}" in k})
    assert result["plot"] is None


def assert_held_out_figures(r):
    """One model's held-out figures: nats per token, perplexity and bits per byte agree (one
    byte per character token, an ASCII corpus), each with a positive stderr below its value."""
    assert r["perplexity"] == pytest.approx(np.exp(r["val_loss"]), rel=1e-3)
    assert r["bits_per_byte"] == pytest.approx(r["val_loss"] / np.log(2), abs=2e-3)
    for key in ("val_loss", "perplexity", "bits_per_byte"):
        assert 0 < r[key + "_stderr"] < r[key]


def test_prune_rejects_bad_sparsities(corpus, teacher):
    import prune
    with pytest.raises(ValueError, match="sparsities"):
        prune.main([f"--model={teacher}", "--sparsities=0,1.2"])


def test_prune_plot_is_written_or_skipped_with_a_message(corpus, tmp_path, capsys):
    import prune
    curve = {"layer": [{"target": 0.0, "sparsity": 0.0, "val_loss": 1.6, "val_loss_stderr": 0.02},
                       {"target": 0.5, "sparsity": 0.5, "val_loss": 1.7, "val_loss_stderr": 0.03}]}
    path = tmp_path / "plot" / "prune.png"
    written = prune.plot_curve(curve, {"sparsity": 0.5, "val_loss": 1.8, "val_loss_stderr": 0.03},
                               {"val_loss": 1.6, "val_loss_stderr": 0.02}, str(path))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert written is None and not path.exists()
        assert "matplotlib is not installed" in capsys.readouterr().out
    else:
        assert written == str(path) and path.stat().st_size > 0
