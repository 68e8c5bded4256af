"""The command line on a chat model: the built-in chat tasks resolve on a checkpoint whose
tokenizer has the chat tokens, ask the held-out split its record names (or --per_task /
--held_out), and fail in one line naming the task on a checkpoint without them; an unknown name
lists the plain and the chat tasks."""
import json
import subprocess
import sys

import pytest

from tinygrad_llm.eval import BUILTIN
import tinygrad_llm.eval.__main__ as cli
from tinygrad_llm.eval.__main__ import main
from tinygrad_llm.eval.chat import CHAT_BUILTIN, chat_context
from tinygrad_llm.finetune import task_records
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.tokenizers import CHAT_SPECIAL_TOKENS, BPETokenizer, CharTokenizer, ChatTemplate
from tinygrad_llm.train import save_checkpoint
from tinygrad_llm.train.cli import OptionError

# two speakers with 60 lines each (who_speaks keeps speakers with >= 50 lines)
PLAY = "\n".join(f"{['ROMEO', 'JULIET'][i % 2]}:\nBut soft, what light through window {i}\n"
                 f"It is the east, and {i} is the sun.\n" for i in range(60))


@pytest.fixture
def play(tmp_path, monkeypatch):
    path = tmp_path / "play.txt"
    path.write_text(PLAY)
    monkeypatch.setenv("TINYGRAD_LLM_DATA", str(path))
    return PLAY


def save_tiny(path, tok, record=None):
    config = GPTConfig.preset("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=64,
                              vocab_size=tok.vocab_size, dropout=0.0)
    save_checkpoint(str(path), GPT(config).eval(), record={
        "model_config": config.to_dict(), "tokenizer": tok.to_dict(), **(record or {})})
    return str(path)


@pytest.fixture
def chat_ckpt(tmp_path, play):
    tok = BPETokenizer.train(PLAY + "What is 1+2? Reverse: night", vocab_size=300,
                             special_tokens=CHAT_SPECIAL_TOKENS)
    sft = {"steps": 1, "lora": False, "per_task": 20, "held_out": 4, "seed": 0}
    return save_tiny(tmp_path / "chat.safetensors", tok, {"sft": sft}), tok


def test_cli_evaluates_a_chat_model_on_the_sft_split(tmp_path, chat_ckpt, capsys):
    ckpt, tok = chat_ckpt
    out = tmp_path / "report.json"
    main([f"--ckpt={ckpt}", "--tasks=chat_arithmetic,chat_preference,arithmetic", "--limit=2",
          f"--out={out}", "--bootstrap=20"])
    report = json.loads(out.read_text())
    assert list(report["tasks"]) == ["chat_arithmetic", "chat_preference", "arithmetic"]
    assert report["chat_split"] == {"per_task": 20, "held_out": 4, "seed": 0}
    chat = report["tasks"]["chat_arithmetic"]
    assert chat["n_docs"] == 2 and set(chat["metrics"]) == {"exact_match", "courtesy"}
    assert set(report["tasks"]["chat_preference"]["metrics"]) == {"acc", "acc_norm",
                                                                  "acc_centred"}
    assert "chat_arithmetic/exact_match" in json.loads(capsys.readouterr().out.splitlines()[-1])


def test_cli_split_options_override_the_record(tmp_path, chat_ckpt, monkeypatch):
    ckpt, tok = chat_ckpt
    asked = []

    def spy(model, tokenizer, tasks, **kw):        # the tasks evaluate would be given
        asked.extend(tasks)
        return {"tasks": {}}
    monkeypatch.setattr(cli, "evaluate", spy)
    main([f"--ckpt={ckpt}", "--tasks=chat_reversal", "--held_out=5",
          f"--out={tmp_path / 'r.json'}"])
    _, held = task_records(PLAY, 20, 5, 0)
    template = ChatTemplate(tok)
    assert [d["context"] for d in asked[0].docs] == [chat_context(template, r["prompt"])
                                                     for r in held["reversal"]]
    with pytest.raises(OptionError, match="--held_out: expected an int >= 1"):
        main([f"--ckpt={ckpt}", "--tasks=chat_reversal", "--held_out=0"])


def test_cli_chat_task_on_a_model_without_chat_tokens_fails_in_one_line(tmp_path, play):
    ckpt = save_tiny(tmp_path / "base.safetensors", CharTokenizer.from_text(PLAY + "?+"))
    done = subprocess.run([sys.executable, "-m", "tinygrad_llm.eval", f"--ckpt={ckpt}",
                           "--tasks=arithmetic,chat_who_speaks"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "chat_who_speaks" in lines[0] and "<|assistant|>" in lines[0]


def test_cli_unknown_task_lists_plain_and_chat_tasks():
    with pytest.raises(OptionError) as err:
        main(["--ckpt=unused.safetensors", "--tasks=arithmetic,chat_poetry"])
    message = str(err.value)
    assert "'chat_poetry'" in message and ".jsonl" in message
    for name in [*BUILTIN, *CHAT_BUILTIN]:
        assert name in message
