"""The long-context studies end to end on tiny models: examples/streaming.py,
examples/transformer_xl.py and examples/long_context_costs.py run, print their table, write JSON,
and end with the JSON line (passkey.py's own test is in tests/data/test_passkey.py)."""
import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def examples(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


def _last_json(capsys, result):
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(result))
    return out


def test_streaming_example(examples, shakespeare_text, tmp_path, capsys):
    import streaming
    result = streaming.main(["--block_size=16", "--n_layer=1", "--n_head=2", "--n_embd=64",
                             "--max_iters=3", "--batch_size=2", "--stream_blocks=3",
                             "--gen_tokens=40", "--gen_block=20", "--eval_windows=2",
                             f"--out_dir={tmp_path}"])
    _last_json(capsys, result)
    written = json.loads((tmp_path / "streaming.json").read_text())
    assert written and (tmp_path / "ckpt.safetensors").exists()


def test_transformer_xl_example(examples, shakespeare_text, tmp_path, capsys):
    import transformer_xl
    result = transformer_xl.main(["--segment_len=8", "--mem_len=8", "--n_layer=1",
                                  "--n_head=2", "--n_embd=16", "--max_iters=3",
                                  "--batch_size=2", "--curve_tokens=32", "--val_chars=200",
                                  "--sample_tokens=5", f"--out_dir={tmp_path}"])
    _last_json(capsys, result)
    runs = json.loads((tmp_path / "transformer_xl.json").read_text())["runs"]
    assert [r["mem_len"] for r in runs] == [8, 0, 0]
    memory, same_steps, equal_flops = runs
    assert memory["parameters"] == same_steps["parameters"] == equal_flops["parameters"]
    # the baseline given the memory model's FLOPs trains longer, and spends about as much
    assert equal_flops["steps"] > same_steps["steps"] == memory["steps"]
    assert equal_flops["train_flops"] == pytest.approx(memory["train_flops"], rel=0.25)
    with pytest.raises(Exception, match="val_chars"):
        transformer_xl.main(["--segment_len=8", "--val_chars=10", f"--out_dir={tmp_path}"])


@pytest.mark.slow
def test_long_context_costs_example(examples, tmp_path, capsys):
    import long_context_costs
    result = long_context_costs.main(["--sizes=256,512", "--contexts=256", "--decode_steps=2",
                                      "--n_layer=1", "--n_embd=64", "--sink_window=128",
                                      "--prefill_chunk=128", f"--out_dir={tmp_path}"])
    _last_json(capsys, result)
    assert (tmp_path / "long_context_costs.json").exists()
