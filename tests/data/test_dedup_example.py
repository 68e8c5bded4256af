"""examples/dedup.py: documents keep the text, the corruption injects the copies it says
(exact, spacing, near with the asked edits), the scoring counts a copy kept in place of its
original as found, a tiny study runs end to end (tables, JSON, figure, the last JSON line; exact
dedup finds the exact and re-spaced copies, near dedup all of them), and bad options are one
line with exit status 2."""
import json
import sys

import numpy as np
import pytest

from tinygrad_llm.data import dedup_exact
from tinygrad_llm.data.dedup import DedupResult, normalize
from tinygrad_llm.train import run_main

TINY = ["--text_chars=20000", "--n_layer=1", "--n_embd=16", "--n_head=2", "--block_size=80",
        "--batch_size=4", "--steps=6", "--eval_batches=2", "--probes=4", "--curve_points=2"]


@pytest.fixture
def dedup_example(load_example):
    return load_example("dedup")


def test_documents_are_whole_speeches_of_at_least_doc_chars(dedup_example, shakespeare_text):
    text = shakespeare_text[:30000]
    docs = dedup_example.documents(text, 400)
    assert "\n\n".join(docs) == text
    assert all(len(d) >= 400 for d in docs)
    assert dedup_example.documents("short", 400) == ["short"]


def test_the_corruption_injects_what_it_says(dedup_example, shakespeare_text):
    docs = dedup_example.documents(shakespeare_text[:40000], 400)
    args = dedup_example._resolve(dedup_example.Args(copies=4, near_edits=5, dup_fraction=0.25))
    corpus, family, kind, chosen = dedup_example.corrupt(docs, args, np.random.default_rng(0))
    assert len(chosen) == round(0.25 * len(docs))
    assert len(corpus) == len(docs) + 4 * len(chosen)
    assert sorted(kind).count("near") == 2 * len(chosen)
    for i, text in enumerate(corpus):
        original = docs[family[i]] if family[i] >= 0 else None
        if kind[i] == "exact":
            assert text == original
        elif kind[i] == "spacing":
            assert text != original and normalize(text) == normalize(original)
        elif kind[i] == "near":
            assert len(text) == len(original)
            assert sum(a != b for a, b in zip(text, original)) == 5
    # the originals stay in order; each duplicated one is marked with its own index
    originals = [corpus[i] for i in range(len(corpus)) if kind[i] == "original"]
    assert originals == docs
    assert sorted(set(family[family >= 0].tolist())) == chosen.tolist()


def test_the_score_counts_a_copy_kept_before_its_original(dedup_example):
    # 0: a copy of doc 7 placed first, 1: doc 7 (its original), 2: an unrelated doc, 3: a near
    # copy of 7 that the dedup missed, 4: another unrelated doc wrongly merged into 2
    family = np.array([7, 7, -1, 7, -1])
    kind = ["exact", "original", "original", "near", "original"]
    result = DedupResult(kept=np.array([0, 2, 3]), representative=np.array([0, 0, 2, 3, 2]),
                         groups=[[0, 1], [2, 4]], pairs=None, report={})
    row = dedup_example.score(result, family, kind)
    assert row["removed"] == 2 and row["true_positives"] == 1
    assert row["recall"] == 0.5 and row["precision"] == 0.5
    assert row["recall_exact"] == 1.0 and row["recall_near"] == 0.0
    assert row["recall_spacing"] is None


def test_a_tiny_study_runs_and_writes_its_report(dedup_example, shakespeare_text, tmp_path,
                                                capsys):
    result = dedup_example.main(TINY + [f"--out_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(result))
    report = json.loads((tmp_path / "dedup.json").read_text())
    assert report["injected"] == result["injected"] == 4 * report["duplicated"] > 0
    # exact finds the exact and re-spaced copies (half), near finds every copy; nothing wrong
    assert result["exact_recall"] == 0.5 and result["near_recall"] == 1.0
    assert result["exact_precision"] == result["near_precision"] == 1.0
    assert result["near_docs_per_s"] > 0 and result["near_mb_per_s"] > 0
    assert report["near_copy_jaccard"]["min"] >= 0.8
    assert [r["corpus"] for r in report["runs"]] == ["corrupted", "deduplicated", "clean"]
    for run in report["runs"]:
        assert run["steps"] == 6 and np.isfinite(run["val_loss"])
        assert 0 <= run["memorised_dup"] <= 1 and 0 <= run["match_chars_dup"] <= 20
        assert [p["step"] for p in run["curve"]] == [3, 6]
    corrupted, deduplicated, clean = report["runs"]
    assert corrupted["chars"] > deduplicated["chars"]
    assert abs(deduplicated["chars"] - clean["chars"]) < 0.01 * clean["chars"]
    assert set(result["val_loss"]) == {"corrupted", "deduplicated", "clean"}
    assert report["png"] is None or (tmp_path / "dedup.png").exists()
    header = [line for line in out.splitlines() if line.lstrip().startswith("method")][0]
    assert header.split()[:7] == ["method", "kept", "removed", "groups", "true_positives",
                                  "recall", "precision"]
    # the exact dedup of the corpus the study built agrees with its table
    assert report["exact_report"]["n_removed"] == report["dedup"][0]["removed"]
    assert dedup_exact(["a b", "A  b"]).report["n_removed"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--nope=1"], "unknown option --nope"),
    (["--dup_fraction=0"], "--dup_fraction: expected a fraction in (0, 1], got 0.0"),
    (["--threshold=2"], "--threshold: expected a number in (0, 1], got 2.0"),
    (["--copies=0"], "--copies: expected an int >= 1, got 0"),
    (["--block_size=60"], "--prompt_chars + --continuation: 50 + 20 exceeds --block_size=60"),
])
def test_bad_options_are_one_line_and_exit_2(dedup_example, argv, message, capsys,
                                             monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dedup.py"])
    with pytest.raises(SystemExit) as exit_:
        run_main(dedup_example.main, argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
