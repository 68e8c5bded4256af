"""Tasks and reports: JSONL loading and its errors (file and line), unknown task names, the
built-in tasks' shape, the bootstrap standard error, evaluate's report, and the command line on
a tiny saved checkpoint (a report written; an unknown option answered with exit status 2)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tinygrad_llm.eval import bootstrap_stderr, evaluate, get_task, load_jsonl
from tinygrad_llm.eval.__main__ import main
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.tokenizers import CharTokenizer
from tinygrad_llm.train import save_checkpoint
from tinygrad_llm.train.cli import OptionError

TEXT = ("the quick brown fox jumps over the lazy dog.\nWho?: ABCD 0123456789+\n"
        "Question: What is it? Answer: Context\n")


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_load_jsonl_multiple_choice_and_generate(tmp_path):
    mc = load_jsonl(write_lines(tmp_path / "mc.jsonl", [
        json.dumps({"context": "Q", "choices": ["a", "b"], "gold": 1}), "",
        json.dumps({"context": "R", "choices": ["c", "d", "e"], "gold": 0})]))
    assert (mc.name, mc.kind, len(mc.docs)) == ("mc", "multiple_choice", 2)
    gen = load_jsonl(write_lines(tmp_path / "qa.jsonl", [json.dumps({"context": "Q",
                                                                     "answer": "4"})]))
    assert (gen.kind, gen.docs[0]["answer"]) == ("generate", "4")


@pytest.mark.parametrize("bad, words", [
    ("{not json", "not valid JSON"),
    (json.dumps({"context": "Q", "choices": ["a", "b"], "gold": 5}), "'gold'"),
    (json.dumps({"context": "Q", "choices": ["a", "b"]}), "missing ['gold']"),
    (json.dumps({"context": "Q", "choices": "ab", "gold": 0}), "'choices'"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, words):
    path = write_lines(tmp_path / "t.jsonl", [
        json.dumps({"context": "Q", "choices": ["a", "b"], "gold": 0}), bad])
    with pytest.raises(ValueError) as err:
        load_jsonl(path)
    assert f"{path}:2" in str(err.value) and words in str(err.value)


def test_first_line_of_unknown_shape_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [json.dumps({"question": "Q"})])
    with pytest.raises(ValueError, match=r"t\.jsonl:1: expected an object with keys"):
        load_jsonl(path)


def test_unknown_task_lists_the_available_ones():
    with pytest.raises(ValueError) as err:
        get_task("hellaswag")
    message = str(err.value)
    assert "'hellaswag'" in message
    for name in ("arithmetic", "reversal", "who_speaks", "next_line", "who_speaks_play",
                 "next_line_play", "shakespeare_ppl"):
        assert name in message


def test_generated_tasks_use_the_context_question_answer_form():
    task = get_task("arithmetic")
    doc = task.docs[0]
    a, b = map(int, doc["context"].split("What is ")[1].split("?")[0].split("+"))
    assert doc["context"].startswith("Question: What is ") and doc["context"].endswith(
        "\nAnswer:")
    assert int(doc["answer"]) == a + b and task.kind == "generate"


def test_shakespeare_cloze_tasks(shakespeare_text):
    held_out = shakespeare_text[int(len(shakespeare_text) * 0.9):]
    for name in ("who_speaks", "next_line"):
        task = get_task(name, text=shakespeare_text)
        assert task.kind == "multiple_choice" and len(task.docs) == 200
        for doc in task.docs[:20]:
            assert len(doc["choices"]) == 4 == len(set(doc["choices"]))
            line = doc["context"].split("Context: ")[1].split("\nQuestion:")[0]
            assert line in held_out
    next_line = get_task("next_line", text=shakespeare_text).docs[0]
    line = next_line["context"].split("Context: ")[1].split("\nQuestion:")[0]
    assert line + "\n" + next_line["choices"][next_line["gold"]] in held_out
    ppl = get_task("shakespeare_ppl", text=shakespeare_text)
    assert ppl.docs == [{"text": held_out}]


def test_play_layout_cloze_tasks_ask_the_same_questions(shakespeare_text):
    held_out = shakespeare_text[int(len(shakespeare_text) * 0.9):]
    for name in ("who_speaks", "next_line"):
        qa, play = get_task(name, text=shakespeare_text), get_task(name + "_play",
                                                                   text=shakespeare_text)
        assert play.name == name + "_play" and play.target_delimiter == ""
        assert qa.target_delimiter == " " and len(play.docs) == len(qa.docs)
        assert [d["gold"] for d in play.docs] == [d["gold"] for d in qa.docs]
    speaker = get_task("who_speaks_play", text=shakespeare_text).docs[0]
    heading, line = speaker["choices"][speaker["gold"]].split(":\n")
    assert speaker["context"] == "\n\n" and f"{heading}:\n" in held_out and line in held_out
    assert all(c.endswith(f":\n{line}") for c in speaker["choices"])
    follow = get_task("next_line_play", text=shakespeare_text).docs[0]
    assert follow["context"].endswith("\n")
    assert follow["context"] + follow["choices"][follow["gold"]] in held_out


def test_bootstrap_stderr():
    assert bootstrap_stderr(np.full(50, 0.7)) == 0.0
    coin = np.tile([0.0, 1.0], 200)                        # p = 0.5, n = 400
    assert bootstrap_stderr(coin, n=2000) == pytest.approx(np.sqrt(0.25 / 400), rel=0.1)
    assert np.isnan(bootstrap_stderr(np.array([1.0])))


def tiny_setup(block_size=16):
    tok = CharTokenizer.from_text(TEXT)
    config = GPTConfig.preset("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=block_size,
                              vocab_size=tok.vocab_size, dropout=0.0)
    return GPT(config).eval(), tok, config


def test_evaluate_report(tmp_path):
    model, tok, _ = tiny_setup()
    mc = write_lines(tmp_path / "mc.jsonl", [
        json.dumps({"context": "Who?", "choices": ["ABCD", "fox", "dog"], "gold": i % 3})
        for i in range(6)])
    ppl = write_lines(tmp_path / "ppl.jsonl", [json.dumps({"text": TEXT * 2})])
    report = evaluate(model, tok, ["arithmetic", mc, ppl], limit=4, bootstrap=50)
    arith = report["tasks"]["arithmetic"]
    assert arith["n_docs"] == 4 and 0 <= arith["metrics"]["exact_match"]["value"] <= 1
    m = report["tasks"]["mc"]["metrics"]
    assert set(m) == {"acc", "acc_norm", "acc_centred"}
    # one context and one set of choices, gold cycling 0, 1, 2, 0: 2 or 1 of the 4 right
    assert m["acc"]["value"] in (0.25, 0.5) and m["acc"]["stderr"] > 0
    p = report["tasks"]["ppl"]["metrics"]
    assert p["perplexity"]["value"] == pytest.approx(np.exp(p["nll_per_token"]["value"]))
    assert p["perplexity"]["stderr"] > 0


def save_tiny_checkpoint(path):
    model, tok, config = tiny_setup()
    save_checkpoint(str(path), model, record={"model_config": config.to_dict(),
                                              "tokenizer": tok.to_dict()})
    return str(path)


def test_cli_writes_a_report(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt.safetensors")
    tasks = write_lines(tmp_path / "qa.jsonl", [json.dumps({"context": "Who?", "answer": "A"})])
    out = tmp_path / "report.json"
    main([f"--ckpt={ckpt}", f"--tasks=arithmetic,{tasks}", "--limit=2", f"--out={out}",
          "--bootstrap=20"])
    report = json.loads(out.read_text())
    assert report["ckpt"] == ckpt
    assert report["tasks"]["arithmetic"]["n_docs"] == 2
    assert report["tasks"]["qa"]["metrics"]["exact_match"]["stderr"] is None   # 1 doc: nan
    printed = capsys.readouterr().out
    assert "exact_match" in printed and json.loads(printed.splitlines()[-1])["out"] == str(out)
    with pytest.raises(OptionError, match="--ckpt is required"):
        main(["--tasks=arithmetic"])


def test_cli_unknown_option_exits_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tinygrad_llm.eval", "--ckpt=x",
                           "--taks=arithmetic"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--taks" in done.stderr and "did you mean --tasks" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
