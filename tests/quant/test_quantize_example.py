"""examples/quantize.py end to end on a tiny checkpoint: the table's rows, a smaller file, the
record that lets load_model (and sample.py) rebuild the quantized model, the GGUF file, and the
held-out figures of the evaluation harness."""
import json
import os
import sys

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.quant import QuantLinear, load_gguf
from tinygrad_llm.train import load_model

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quant_example")
    corpus = tmp / "corpus.txt"
    corpus.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n" * 80)
    sys.path.insert(0, EXAMPLES)
    with pytest.MonkeyPatch.context() as mp:            # the corpus for this module only
        mp.setenv("TINYGRAD_LLM_DATA", str(corpus))
        import train_shakespeare
        # the baseline GPT-2: llama.cpp's gpt2 cannot express the speedrun recipe's pieces
        train_shakespeare.main(["--recipe=baseline", "--max_iters=3", "--n_layer=1",
                                "--n_head=2", "--n_embd=64", "--block_size=32",
                                f"--out_dir={tmp / 'base'}",
                                "--sample_tokens=0", "--progress=false", "--eval_interval=3",
                                "--eval_iters=1"])
        yield tmp


@pytest.mark.parametrize("scheme, gptq", [("q4_0", False), ("q8_0", True)])
def test_quantize_example(checkpoint, scheme, gptq, capsys):
    pytest.importorskip("gguf")
    import quantize as example
    out = checkpoint / f"out-{scheme}" / "ckpt.safetensors"
    gguf_path = checkpoint / f"model-{scheme}.gguf"
    result = example.main([f"--ckpt={checkpoint / 'base' / 'ckpt.safetensors'}",
                           f"--scheme={scheme}", f"--gptq={gptq}", f"--out_dir={out.parent}",
                           f"--gguf={gguf_path}", "--eval_windows=8", "--calib_windows=4",
                           "--max_new_tokens=10"])
    printed = capsys.readouterr().out
    assert "val ppl" in printed and json.loads(printed.strip().splitlines()[-1]) == result
    assert result["size_ratio"] < 0.6
    assert abs(result["ppl_change_pct"]) < 10
    for r in (result["float32"], result["quantized"]):   # the harness's held-out figures
        # one byte per character token (an ASCII corpus): bits per byte = log2 perplexity
        assert r["val_bits_per_byte"] == pytest.approx(np.log2(r["val_ppl"]), abs=2e-3)
        assert 0 < r["val_ppl_stderr"] < r["val_ppl"]
    model, _, record = load_model(str(out))
    assert record["quantization"]["scheme"] == scheme
    assert isinstance(model.blocks[0].attn.qkv, QuantLinear)
    from_gguf = load_gguf(gguf_path)
    ids = np.arange(12)[None] % model.config.vocab_size
    with tl.no_grad():
        a, b = model(ids).numpy(), from_gguf(ids).numpy()
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.9     # the same blocks (embeddings float)


@pytest.mark.parametrize("bad", ["--eval_windows=0", "--eval_stride=33", "--eval_stride=-1"])
def test_quantize_example_rejects_bad_eval_options(checkpoint, bad):
    import quantize as example
    with pytest.raises(ValueError, match=bad.split("=")[0].lstrip("-")):
        example.main([f"--ckpt={checkpoint / 'base' / 'ckpt.safetensors'}",
                      f"--out_dir={checkpoint / 'out-bad'}", bad])
