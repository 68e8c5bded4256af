"""examples/chat_speedrun.py end to end on a tiny corpus with tiny settings: every stage runs (each
stage's example as a command) and is measured through the harness with standard errors, the
report card is written, a second run skips every stage, and --redo reruns a stage and the ones
after it. Its chat loss through the harness equals the SFT loss on packed held-out chats."""
import json
import os
import sys

import numpy as np
import pytest

from tinygrad_llm import no_grad
from tinygrad_llm.finetune import SFTBatcher
from tinygrad_llm.finetune.sft import segment_mask
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.tokenizers import CHAT_SPECIAL_TOKENS, BPETokenizer, ChatTemplate
from tinygrad_llm.train import load_model

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
LINES = ["Now is the winter of our discontent", "Made glorious summer by this sun of York;",
         "And all the clouds that lour'd upon our house", "In the deep bosom of the ocean buried."]
TINY = ["--vocab_size=300", "--base_iters=4", "--sft_iters=2", "--dpo_iters=2", "--per_task=20",
        "--held_out=3", "--eval_windows=3", "--n_layer=1", "--n_embd=32"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speedrun")
    blocks = [f"{['GLOUCESTER', 'CLARENCE', 'BRAKENBURY'][i % 3]}:\n{LINES[i % 4]}\n"
              f"{LINES[(i + 1) % 4]}\n" for i in range(150)]
    path = tmp / "corpus.txt"
    path.write_text("\n".join(blocks))
    sys.path.insert(0, EXAMPLES)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYGRAD_LLM_DATA", str(path))
        yield tmp / "run"


def test_speedrun_runs_every_stage_and_resumes(run_dir, capsys):
    import chat_speedrun
    card = chat_speedrun.main([f"--out_dir={run_dir}", *TINY])
    assert list(card["stages"]) == list(chat_speedrun.STAGES)
    assert not any(r["skipped"] for r in card["stages"].values())
    for stage in ("pretrain", "sft", "dpo", "quantize"):
        r = card["stages"][stage]
        assert r["val_loss"] > 0 and r["chat_val_loss"] > 0
        assert set(r["accuracy"]) == set(r["accuracy_stderr"]) == set(chat_speedrun.TASKS)
        assert 0 <= r["behaviour_rate"] <= 1
        for key in ("val_loss", "chat_val_loss", "mean_accuracy", "behaviour_rate"):
            assert r[f"{key}_stderr"] >= 0
    assert card["stages"]["pretrain"]["steps"] == 4
    quant = card["stages"]["quantize"]
    assert quant["file_mb"] < quant["float_file_mb"]
    assert load_model(str(run_dir / "quantize" / "ckpt.safetensors"))[2]["quantization"][
        "scheme"] == "q8_0"
    turns = card["stages"]["chat"]["conversation"]
    assert [t["user"] for t in turns] == chat_speedrun.CONVERSATION
    with open(run_dir / "report.json") as f:
        assert json.load(f) == json.loads(json.dumps(card))
    markdown = (run_dir / "report.md").read_text()
    for stage in chat_speedrun.STAGES:
        assert f"| {stage} |" in markdown
    sft = card["stages"]["sft"]
    assert f"| {sft['mean_accuracy']:.2f} ± {sft['mean_accuracy_stderr']:.2f} |" in markdown
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["total_wall_s"] == \
        card["total_wall_s"]

    again = chat_speedrun.main([f"--out_dir={run_dir}", *TINY])       # everything done: skipped
    assert all(r["skipped"] for r in again["stages"].values())
    assert again["stages"]["sft"]["val_loss"] == card["stages"]["sft"]["val_loss"]

    redo = chat_speedrun.main([f"--out_dir={run_dir}", "--redo=quantize", *TINY])
    assert [s for s, r in redo["stages"].items() if not r["skipped"]] == ["quantize", "chat"]

    with pytest.raises(SystemExit, match="sft_iters 2, now 3"):      # not silently reused
        chat_speedrun.main([f"--out_dir={run_dir}", *TINY, "--sft_iters=3"])


def test_speedrun_rejects_an_unknown_stage(run_dir):
    import chat_speedrun
    with pytest.raises(ValueError, match="--redo must be one of"):
        chat_speedrun.main([f"--out_dir={run_dir}", "--redo=train", *TINY])


def test_chat_loss_is_the_sft_loss_on_the_held_out_chats(monkeypatch):
    monkeypatch.syspath_prepend(EXAMPLES)
    import chat_speedrun
    text = "What is 12+30? 42. Reverse: night thgin. Who speaks this line? ROMEO " * 20
    template = ChatTemplate(BPETokenizer.train(text, vocab_size=300,
                                               special_tokens=CHAT_SPECIAL_TOKENS))
    config = GPTConfig.preset("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=64,
                              vocab_size=template.tokenizer.vocab_size, dropout=0.0)
    model = GPT(config).to(dtype=np.float64).eval()
    records = [{"prompt": "What is 12+30?", "response": "42"},
               {"prompt": "Reverse: night", "response": "thgin"},
               {"prompt": "Who speaks this line?", "response": "ROMEO, my lord"}]
    # the oracle: the records packed into blocks, each attending to itself, loss on the answers
    batcher = SFTBatcher(template, records, block_size=64)
    rows = np.arange(len(batcher))
    batch = (batcher.inputs[rows], batcher.targets[rows], batcher.positions[rows],
             segment_mask(batcher.segments[rows]))
    inputs, kw = batcher.forward_kwargs(model, batch)
    with no_grad():
        expected = float(model(inputs, **kw)[1].numpy())
    got = chat_speedrun.chat_loss(model, template, records)
    assert got["value"] == pytest.approx(expected, rel=1e-9)
    assert got["stderr"] > 0
