"""examples/chat.py on a tiny random checkpoint: a scripted two-turn conversation (only the new
turn's tokens are prefilled), one-shot --prompt mode, /reset, streamed text equal to the decoded
reply (partial UTF-8 held back), and a tokenizer without chat tokens refused with an explanation."""
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.tokenizers import CHAT_SPECIAL_TOKENS, BPETokenizer, ChatTemplate
from tinygrad_llm.train import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "chat.py"
TEXT = ("hello there, how are you today?\nI am well, thank you kindly.\n"
        "Café crème, naïve façade, ünïcödé ✓ déjà vu.\nhow are you? hello hello.\n") * 4


def write_checkpoint(path, special_tokens=CHAT_SPECIAL_TOKENS):
    tok = BPETokenizer.train(TEXT, vocab_size=300, special_tokens=special_tokens)
    config = GPTConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=16,
                              block_size=96)
    model = GPT(config)
    save_checkpoint(str(path), model, record={"model_config": config.to_dict(),
                                              "tokenizer": tok.to_dict(), "step": 0})
    return tok


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "ckpt.safetensors"
    return path, write_checkpoint(path)


def run_chat(args, stdin=""):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(EXAMPLE), *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=300)


def user_turn_ids(tok, message):
    return ChatTemplate(tok).render([{"role": "user", "content": message}], True)[0]


def load_example():
    spec = importlib.util.spec_from_file_location("chat_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_turns_prefill_only_the_new_tokens(checkpoint):
    path, tok = checkpoint
    run = run_chat([f"--ckpt={path}", "--max_new_tokens=6", "--temperature=0"],
                   "hello\nhow are you\n/quit\nthis line is never read\n")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    summary = json.loads(lines[-1])
    assert run.stdout.count("assistant> ") == 2              # two replies were printed
    assert summary["turns"] == 2 and len(summary["replies"]) == 2
    first, second = len(user_turn_ids(tok, "hello")), len(user_turn_ids(tok, "how are you"))
    assert summary["prefill_per_turn"] == [first, second]
    assert summary["prefill_tokens"] == first + second
    # the cache holds both turns once: prefills, replies, and an <|end|> for each cut-off reply
    assert summary["cache_length"] == (first + second + summary["tokens_generated"]
                                       + summary["closing_end_tokens"])
    assert 2 <= summary["tokens_generated"] <= 12 and summary["tokens_per_s"] > 0


def test_prompt_mode_answers_once(checkpoint):
    path, tok = checkpoint
    run = run_chat([f"--ckpt={path}", "--prompt=hello there", "--max_new_tokens=5",
                    "--temperature=0"], "ignored\n")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.splitlines()[-1])
    assert summary["turns"] == 1 and run.stdout.count("assistant> ") == 1
    assert summary["prefill_per_turn"] == [len(user_turn_ids(tok, "hello there"))]


def test_reset_starts_the_conversation_over(checkpoint):
    path, tok = checkpoint
    args = [f"--ckpt={path}", "--max_new_tokens=8", "--temperature=0"]
    run = run_chat(args, "hello\n/reset\nhello\nhello\n")     # ends at EOF, no /quit
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.splitlines()[-1])
    assert summary["turns"] == 3 and summary["resets"] == 1
    parts = run.stdout.split("assistant> ")
    assert parts[1].endswith("\n(conversation cleared)\n")
    first, after_reset = parts[1][:-len("(conversation cleared)\n")], parts[2]
    assert first == after_reset                  # greedy from the same empty state
    n = len(user_turn_ids(tok, "hello"))
    assert summary["prefill_per_turn"] == [n, n, n]
    per_turn = summary["model_tokens_per_turn"]
    assert all(k > n for k in per_turn) and summary["context_shifts"] == 0
    # the cache holds the two turns after the reset, not the first
    assert summary["cache_length"] == per_turn[1] + per_turn[2]


def test_streamed_text_equals_the_decoded_reply(checkpoint):
    path, tok = checkpoint
    chat = load_example()
    args = chat.ChatArgs(ckpt=str(path), max_new_tokens=40, temperature=1.0, top_k=None,
                         seed=3)
    out = io.StringIO()
    c = chat.Chat(*chat.load(args), args, out=out)
    text = c.turn("Café?")
    printed = out.getvalue()
    assert printed.startswith("assistant> ")
    reply = c.session.tokens[c.prefill[0]:]
    reply = [int(t) for t in reply if t not in ChatTemplate(tok).stop_ids]
    assert text == tok.decode(reply) and printed == "assistant> " + text + "\n"
    # the run did meet an unfinished character mid-stream (the case the hold-back is for)
    assert any(tok.decode(reply[:i]).endswith("\ufffd") for i in range(1, len(reply)))


def test_tokenizer_without_chat_tokens_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    write_checkpoint(path, special_tokens=("<|endoftext|>",))
    run = run_chat([f"--ckpt={path}", "--prompt=hello"])
    assert run.returncode != 0
    assert "cannot render chats" in run.stderr and "CHAT_SPECIAL_TOKENS" in run.stderr
    assert "<|assistant|>" in run.stderr and "Traceback" not in run.stderr


def test_unknown_option_is_rejected(checkpoint):
    path, _ = checkpoint
    run = run_chat([f"--ckpt={path}", "--temprature=0.5"])
    assert run.returncode != 0 and "--temprature" in run.stderr


def test_sampling_arguments_reach_the_session(checkpoint):
    path, _ = checkpoint
    chat = load_example()
    args = chat.ChatArgs(ckpt=str(path), temperature=0.5, top_k=7, top_p=0.9)
    c = chat.Chat(*chat.load(args), args)
    assert c.session.sampling == {"temperature": 0.5, "top_k": 7, "top_p": 0.9}
    assert np.isfinite(c.session.feed([1, 2, 3])).all()
