"""examples/finetune_sft.py end to end on a tiny corpus: it trains a base model with the chat
tokens (train_shakespeare.py, run as a command because the base is missing), measures accuracy
before and after through the harness (each with its stderr), and writes a checkpoint that
load_model opens (full fine-tuning and LoRA, merged back into plain layers) and whose record
keeps the held-out split; then dpo.py and rlhf.py from that SFT checkpoint, their figures the
harness's."""
import json

import numpy as np
import pytest

from tinygrad_llm.finetune import LoRALinear
from tinygrad_llm.train import load_model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, play_corpus):
    with play_corpus(tmp_path_factory.mktemp("sft_example")) as tmp:
        yield tmp


@pytest.mark.parametrize("lora", [False, True])
def test_finetune_sft_example(corpus, lora, capsys):
    import finetune_sft
    out = corpus / f"sft-{lora}" / "ckpt.safetensors"
    result = finetune_sft.main([f"--base={corpus / 'base' / 'ckpt.safetensors'}",
                                "--base_iters=3", "--max_iters=3", "--per_task=40",
                                "--held_out=4", f"--lora={lora}", "--batch_size=4",
                                f"--out_dir={out.parent}"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == result
    tasks = {"who_speaks", "arithmetic", "reversal"}
    for when in ("before", "after"):
        assert set(result[f"accuracy_{when}"]) == set(result[f"accuracy_{when}_stderr"]) == tasks
        assert all(0 <= v <= 1 for v in result[f"accuracy_{when}"].values())
        assert all(0 <= e <= 0.5 for e in result[f"accuracy_{when}_stderr"].values())
    model, _, record = load_model(str(out))
    assert record["sft"] == {"steps": 3, "lora": lora, "per_task": 40, "held_out": 4, "seed": 0}
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


@pytest.fixture(scope="module")
def sft(corpus):
    """A tiny SFT checkpoint for the DPO and RLHF examples to start from."""
    import finetune_sft
    path = corpus / "sft-for-alignment" / "ckpt.safetensors"
    finetune_sft.main([f"--base={corpus / 'base' / 'ckpt.safetensors'}", "--base_iters=3",
                       "--max_iters=3", "--per_task=40", "--held_out=4", "--batch_size=4",
                       f"--out_dir={path.parent}"])
    return path


def test_dpo_example(corpus, sft, capsys):
    import dpo
    capsys.readouterr()
    out = corpus / "dpo" / "ckpt.safetensors"
    result = dpo.main([f"--sft={sft}", "--max_iters=3", "--per_task=40", "--held_out=4",
                       "--batch_size=4", f"--out_dir={out.parent}"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    for when in ("before", "after"):
        figures = result[when]
        assert 0 <= figures["preference_rate"] <= 1
        assert 0 <= figures["behaviour_rate"] <= 1
        assert set(figures["accuracy"]) == set(figures["accuracy_stderr"]) == {
            "who_speaks", "arithmetic", "reversal"}
        for key in ("preference_rate_stderr", "behaviour_rate_stderr"):
            assert 0 <= figures[key] <= 0.5
    model, _, record = load_model(str(out))
    assert record["dpo"] == {"steps": 3, "beta": 0.1, "sft_coef": 0.5}


def test_rlhf_example(corpus, sft, capsys):
    import rlhf
    capsys.readouterr()
    out = corpus / "rlhf" / "ckpt.safetensors"
    result = rlhf.main([f"--sft={sft}", "--max_iters=2", "--per_task=40", "--held_out=4",
                        "--batch_size=4", "--group_size=2", f"--out_dir={out.parent}"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    for when in ("before", "after"):
        figures = result[when]
        assert set(figures["sampled_reward"]) == set(figures["sampled_reward_stderr"]) == {
            "train_prompts", "held_out"}
        assert set(figures["greedy_accuracy"]) == set(figures["greedy_accuracy_stderr"]) == {
            "arithmetic", "who_speaks"}
    assert np.isfinite(result["final_kl"])
    assert load_model(str(out))[2]["rlhf"] == {"steps": 2, "kl_coef": 0.05, "group_size": 2}
