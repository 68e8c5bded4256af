"""examples/classify.py and examples/reward_model.py end to end on a tiny corpus: the classifier
on a GPT and on an MLM Encoder that it trains itself when missing (train_mlm.py, a command), the
reward model on a tiny SFT checkpoint, each printing its JSON line with accuracies in [0, 1]
(the classifier's with bootstrap stderrs, beside the GPT's zero-shot answer through the harness);
the saved Encoder and reward model reopen with the same outputs."""
import json

import numpy as np
import pytest

from tinygrad_llm import no_grad
from tinygrad_llm.eval import bootstrap_stderr
from tinygrad_llm.finetune import alignment_setup, preference_pairs
from tinygrad_llm.train import CheckpointError

SPEAKERS = ["ROMEO", "JULIET", "ROMEO", "JULIET", "ROMEO", "NURSE"]   # 3 : 2 : 1 speeches


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, play_corpus):
    tmp = tmp_path_factory.mktemp("classify_reward_examples")
    with play_corpus(tmp, SPEAKERS, blocks=150):
        yield tmp


def test_classify_example(corpus, capsys):
    import classify
    import train_shakespeare
    gpt_dir = corpus / "gpt"
    train_shakespeare.main(["--max_iters=2", "--n_layer=1", "--n_head=2", "--n_embd=32",
                            "--block_size=64", "--batch_size=4", "--eval_iters=1",
                            f"--out_dir={gpt_dir}", "--sample_tokens=0", "--progress=false"])
    encoder = corpus / "mlm" / "ckpt.safetensors"
    assert not encoder.exists()
    capsys.readouterr()
    result = classify.main([f"--gpt={gpt_dir / 'ckpt.safetensors'}", f"--encoder={encoder}",
                            "--mlm_iters=2", "--classes=2", "--max_iters=2", "--batch_size=4"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    task = result["task"]
    assert task["speakers"] == ["ROMEO", "JULIET"]
    assert task["train_examples"] + task["held_out_examples"] == 125      # 75 + 50 speeches
    assert sum(task["class_fractions"]) == pytest.approx(1.0, abs=2e-3)
    assert 0 < task["majority_baseline"] <= 1
    # over n held-out passages a proportion's stderr is about sqrt(p (1 - p) / n)
    n, p = task["held_out_examples"], task["majority_baseline"]
    assert task["majority_baseline_stderr"] == pytest.approx(np.sqrt(p * (1 - p) / n), abs=0.02)
    for kind in ("gpt", "encoder"):
        for run in ("pretrained", "scratch"):
            got = result[kind][run]
            for when in ("before", "after"):
                acc, stderr = got[f"accuracy_{when}"], got[f"accuracy_{when}_stderr"]
                assert 0 <= acc <= 1
                assert stderr == pytest.approx(np.sqrt(acc * (1 - acc) / n), abs=0.02)
            assert np.isfinite(got["final_loss"])
    # the GPT's own zero-shot answer, before fine-tuning, on (at most 48 of) the held-out passages
    zero = result["gpt"]["zero_shot"]
    assert zero["docs"] == min(48, n) and zero["chance"] == 0.5
    assert 0 <= zero["acc"] <= 1 and 0 <= zero["acc_stderr"] <= 0.11
    assert zero["acc_centred"] == pytest.approx(2 * zero["acc"] - 1, abs=2e-3)
    assert "zero_shot" not in result["encoder"]
    # the Encoder was trained because it was missing, and reopens as the same network
    assert encoder.exists()
    model, tokenizer, record = classify.load_encoder(str(encoder))
    assert record["architecture"] == "encoder" and record["tokenizer"]["type"] == "wordpiece"
    assert tokenizer.to_dict() == record["tokenizer"]
    again, _, _ = classify.load_encoder(str(encoder))
    ids = np.array([[2, 5, 6, 3]])
    with no_grad():
        assert np.array_equal(model(ids).numpy(), again(ids).numpy())
    with pytest.raises(CheckpointError, match="architecture"):
        classify.load_encoder(str(gpt_dir / "ckpt.safetensors"))
    with pytest.raises(ValueError, match="backbones"):
        classify.main(["--backbones=lstm"])
    with pytest.raises(ValueError, match="zero_shot_docs"):
        classify.main(["--zero_shot_docs=-1"])


def test_zero_shot_names_the_speaker_under_whose_heading_a_passage_is_likeliest(corpus,
                                                                                monkeypatch):
    """A stand-in language model that knows which heading each passage belongs under: the
    zero-shot answer must follow its log-likelihoods, not the labels."""
    import classify

    class Tokenizer:                                   # one token per character
        def encode(self, text):
            return [ord(c) for c in text]

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    class Model:
        class config:
            max_positions = 64

    passages = ["north wind", "south sun", "north star", "south sea"]
    labels = np.array([0, 1, 0, 0])                   # the last is labelled against its words
    names = ["NORTH", "SOUTH"]
    likely = {(classify.heading(names[p.startswith("south")]), p + "\n") for p in passages}

    def fake_loglikelihood(model, tokenizer, requests):
        return [(0.0 if request in likely else -5.0, False) for request in requests]

    monkeypatch.setattr(classify, "loglikelihood", fake_loglikelihood)
    got = classify.zero_shot(Model(), Tokenizer(), passages, labels, names, seed=0)
    assert got["docs"] == 4 and got["chance"] == 0.5
    assert got["acc"] == 0.75 and got["acc_centred"] == 0.5
    assert got["acc_stderr"] == round(bootstrap_stderr(np.array([1.0, 1, 1, 0])), 3) > 0
    # a passage too long for the window keeps its first tokens, after the whole heading
    Model.config.max_positions = 12                   # heading "\n\nNORTH:\n" is 9 characters
    seen = []
    monkeypatch.setattr(classify, "loglikelihood",
                        lambda m, t, requests: seen.extend(requests) or [(0.0, False)] * 8)
    classify.zero_shot(Model(), Tokenizer(), passages, labels, names, seed=0)
    assert seen[0] == ("\n\nNORTH:\n", "nor")


def test_speaker_passages_labels_and_held_out_speeches():
    import classify
    text = "ANNE:\none\ntwo\nthree\n\nBOB:\nfour\n\nANNE:\nfive\n\nCAT:\nsix\nseven\n"
    passages, labels, speech, names = classify.speaker_passages(text, 2, 2)
    assert names == ["ANNE", "CAT"]                  # 4 and 2 lines; BOB has 1
    assert passages == ["one\ntwo", "three", "five", "six\nseven"]
    assert labels.tolist() == [0, 0, 0, 1]
    held = classify.split_by_speech(speech, 0.5, seed=0)
    for s in np.unique(speech):                      # a speech is held out whole or not at all
        assert len(set(held[speech == s].tolist())) == 1
    with pytest.raises(ValueError, match="classes"):
        classify.speaker_passages(text, 5, 2)


@pytest.fixture(scope="module")
def sft(corpus):
    """A tiny SFT checkpoint for the reward model to start from."""
    import finetune_sft
    import train_shakespeare
    base = corpus / "base"                      # a one-layer base keeps the test quick
    train_shakespeare.main(["--tokenizer=bpe", "--vocab_size=300", "--chat_tokens=true",
                            "--max_iters=2", "--n_layer=1", "--n_head=2", "--n_embd=32",
                            "--block_size=64", "--batch_size=4", "--eval_iters=1",
                            f"--out_dir={base}", "--sample_tokens=0", "--progress=false"])
    path = corpus / "sft" / "ckpt.safetensors"
    finetune_sft.main([f"--base={base / 'ckpt.safetensors'}", "--max_iters=2", "--per_task=30",
                       "--held_out=4", "--batch_size=4", f"--out_dir={path.parent}"])
    return path


def test_reward_model_example(corpus, sft, capsys):
    import reward_model
    capsys.readouterr()
    out = corpus / "reward" / "ckpt.safetensors"
    result = reward_model.main([f"--sft={sft}", "--max_iters=3", "--per_task=30",
                                "--held_out=4", "--batch_size=4", f"--out_dir={out.parent}"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    tasks = {"who_speaks", "arithmetic", "reversal"}
    assert set(result["accuracy_before"]) == set(result["accuracy_after"]) == tasks
    assert all(v == 0.5 for v in result["accuracy_before"].values())   # a zero head ties all
    assert all(0 <= v <= 1 for v in result["accuracy_after"].values())
    assert all(0 <= v <= 1 for v in result["sft_logprob_preference"].values())
    assert all(e == 0.0 for e in result["accuracy_before_stderr"].values())   # all ties
    for key in ("accuracy_after_stderr", "sft_logprob_preference_stderr"):
        assert set(result[key]) == tasks and all(0 <= e <= 0.5 for e in result[key].values())
    assert result["held_out_pairs"] == 12 and np.isfinite(result["final_loss"])
    # the saved reward model scores as the trained one did
    model, record = reward_model.load_reward_model(str(out))
    assert record["reward_model"]["steps"] == 3
    _, template, _, _, held = alignment_setup(str(sft), 30, 4, 0)
    pairs = {t: preference_pairs(r, seed=1) for t, r in held.items()}
    assert reward_model.evaluate(model, template, pairs) == result["accuracy_after"]


def test_reward_model_lengths_end_on_the_end_token(corpus, sft):
    import reward_model
    _, template, _, _, _ = alignment_setup(str(sft), 30, 4, 0)
    pairs = [{"prompt": "What is 1+2?", "chosen": "3", "rejected": "five hundred"}]
    ids, lengths = reward_model.encode(template, pairs)
    for row, n, side in zip(ids, lengths, ("chosen", "rejected")):
        full, _ = template.render([{"role": "user", "content": pairs[0]["prompt"]},
                                   {"role": "assistant", "content": pairs[0][side]}])
        assert n == len(full) and row[n - 1] == template.end_id
        assert np.array_equal(row[:n], full)
