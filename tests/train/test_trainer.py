"""The training loop: bit-identical resume, atomic and verified checkpoints (tensors and record),
Ctrl-C, NaN policy, custom batches and losses, per-group learning rates, and the main example end
to end at a tiny size. The command-line parser is tested in test_cli.py."""
import json
import os
import signal
import sys

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.optim import AdamW, param_groups_for_weight_decay
from tinygrad_llm.train import (CheckpointError, OptionError, TrainConfig, Trainer,
                                load_checkpoint, load_model, save_checkpoint)
from tinygrad_llm.train import checkpoint as checkpoint_module

VOCAB = 11
DATA = (np.arange(3000) * 7 % VOCAB).astype(np.int64)       # a learnable periodic stream


def _trainer(tmp_path, seed=0, dropout=0.1, device="cpu", **overrides):
    tl.manual_seed(seed)
    config = GPTConfig.preset("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=8,
                              vocab_size=VOCAB, dropout=dropout)
    model = GPT(config).to(device)
    opt = AdamW(param_groups_for_weight_decay(model, 0.1), lr=1e-2)
    train = dict(batch_size=4, block_size=8, max_iters=6, eval_interval=100, eval_iters=2,
                 warmup_iters=2, learning_rate=1e-2, seed=5, out_dir=str(tmp_path),
                 progress=False)
    train.update(overrides)
    return Trainer(model, opt, DATA[:2500], DATA[2500:], TrainConfig(**train),
                   record={"model_config": config.to_dict()}, log=lambda s: None)


def _params(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def test_resume_is_bit_identical(tmp_path):
    straight = _trainer(tmp_path / "a")
    losses_straight = [straight.train_step() for _ in range(6)]

    first = _trainer(tmp_path / "b")
    losses = [first.train_step() for _ in range(3)]
    path = str(tmp_path / "b" / "mid.safetensors")
    first.save(path)
    tl.manual_seed(123)                    # a different library RNG state before resuming
    resumed = _trainer(tmp_path / "c", seed=99)   # different initial weights, restored below
    resumed.load(path)
    assert resumed.step == 3
    losses += [resumed.train_step() for _ in range(3)]

    assert losses == losses_straight       # exact equality, dropout included
    a, b = _params(straight.model), _params(resumed.model)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_after_dropout_on_the_device_is_bit_identical(standin_cuda, tmp_path):
    # the references: under the CUDA simulator a model's worth of kernels would take minutes
    with tl.use_kernels(False):
        straight = _trainer(tmp_path / "a", device="cuda")
        expected = [straight.train_step() for _ in range(4)]
        first = _trainer(tmp_path / "b", device="cuda")
        losses = [first.train_step() for _ in range(2)]
        path = str(tmp_path / "b" / "mid.safetensors")
        first.save(path)
        _, _, record = load_checkpoint(path)
        assert record["generator"] == list(tl.backend.get_rng_state("cuda"))   # two ints
        assert all(type(v) is int for v in record["generator"])
        tl.manual_seed(123)
        resumed = _trainer(tmp_path / "c", seed=99, device="cuda")
        resumed.load(path)
        losses += [resumed.train_step() for _ in range(2)]
    assert losses == expected                  # exact: the same dropout masks after the resume
    a, b = _params(straight.model), _params(resumed.model)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_cpu_checkpoint_resumes_the_same_dropout_stream_on_the_device(standin_cuda, tmp_path):
    with tl.use_kernels(False):
        on_cpu = _trainer(tmp_path / "a")
        [on_cpu.train_step() for _ in range(2)]
        path = str(tmp_path / "a" / "mid.safetensors")
        on_cpu.save(path)
        expected = [on_cpu.train_step() for _ in range(2)]
        on_gpu = _trainer(tmp_path / "b", seed=99, device="cuda")
        on_gpu.load(path)
        assert tl.backend.get_rng_state("cuda") == load_checkpoint(path)[2]["generator"]
        losses = [on_gpu.train_step() for _ in range(2)]
    # other masks would move the loss by far more than the devices' rounding
    np.testing.assert_allclose(losses, expected, rtol=1e-6)


def test_fit_writes_log_checkpoint_and_evaluates(tmp_path):
    t = _trainer(tmp_path, max_iters=4, eval_interval=2)
    last = t.fit()
    assert last["step"] == 4 and np.isfinite(last["val_loss"])
    lines = [json.loads(x) for x in open(tmp_path / "log.jsonl")]
    assert [e["step"] for e in lines] == [2, 4]
    _, _, record = load_checkpoint(str(tmp_path / "ckpt.safetensors"))
    assert record["step"] == 4 and record["model_config"]["n_embd"] == 16


def test_evaluation_does_not_move_the_training_stream(tmp_path):
    # no dropout: the two trainers would otherwise share the library's generator
    a, b = _trainer(tmp_path / "a", dropout=0.0), _trainer(tmp_path / "b", dropout=0.0)
    a.train_step()
    b.train_step()
    b.evaluate()
    assert a.train_step() == b.train_step()


def test_interrupted_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    t = _trainer(tmp_path)
    t.train_step()
    path = str(tmp_path / "ckpt.safetensors")
    t.save(path)
    before = open(path, "rb").read()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(checkpoint_module, "save_file", crash)
    t.train_step()
    with pytest.raises(OSError):
        t.save(path)
    assert open(path, "rb").read() == before
    load_checkpoint(path)                   # still loads


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_checkpoint_raises_clearly(tmp_path, damage):
    t = _trainer(tmp_path)
    path = str(tmp_path / "ckpt.safetensors")
    t.save(path)
    data = bytearray(open(path, "rb").read())
    if damage == "truncate":
        data = data[: len(data) - 100]
    else:
        data[-50] ^= 0xFF                   # a byte inside the last tensor
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt|truncated"):
        load_checkpoint(path)


def _flip_in_record(path, key):
    """Change the first digit after `"key": ` inside the file's JSON record, in place."""
    data = bytearray(open(path, "rb").read())
    at = data.index(f'\\"{key}\\": '.encode()) + len(key) + 5      # the record is a JSON string
    while not chr(data[at]).isdigit():
        at += 1
    data[at] = ord("7") if data[at] != ord("7") else ord("3")
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("key", ["step", "lr"])
def test_a_flipped_digit_in_the_record_is_caught(tmp_path, key):
    t = _trainer(tmp_path)
    t.train_step()
    path = str(tmp_path / "ckpt.safetensors")
    t.save(path)
    load_checkpoint(path)
    _flip_in_record(path, key)
    with pytest.raises(CheckpointError, match="its tensors or its record do not match"):
        load_checkpoint(path)


def test_a_checkpoint_from_before_record_checksums_loads_with_a_warning(tmp_path):
    """The older layout: the record held a sha256 of the tensors alone. Its tensors are still
    verified; the record cannot be, and the warning says so."""
    model = _trainer(tmp_path).model
    arrays, aliases = checkpoint_module.model_arrays(model)
    tensors = {f"model/{k}": v for k, v in arrays.items()}
    record = {"step": 3, "aliases": aliases, "sha256": checkpoint_module._digest(tensors)}
    path = str(tmp_path / "old.safetensors")
    checkpoint_module.save_file(tensors, path, metadata={"record": json.dumps(record)})
    with pytest.warns(UserWarning, match="predates checksummed records.*save it again"):
        state, _, loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and np.array_equal(state["tok_emb.weight"],
                                                 arrays["tok_emb.weight"])
    data = bytearray(open(path, "rb").read())
    data[-50] ^= 0xFF                                   # its tensors are still checked
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="tensors do not match"):
        load_checkpoint(path)


def test_missing_checkpoint_raises(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.safetensors"))


def test_checkpoint_keeps_tied_weights_once(tmp_path):
    model = _trainer(tmp_path).model
    path = str(tmp_path / "m.safetensors")
    save_checkpoint(path, model)
    state, _, record = load_checkpoint(path)
    assert record["aliases"] == {"head.weight": "tok_emb.weight"}
    assert np.array_equal(state["head.weight"], state["tok_emb.weight"])


def test_nan_loss_stops_naming_the_step(tmp_path):
    t = _trainer(tmp_path)
    t.train_step()
    t.model.tok_emb.weight.data[...] = np.nan
    with pytest.raises(FloatingPointError, match="at step 1"):
        t.train_step()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # a NaN loss backpropagates
def test_nan_loss_can_skip_the_step(tmp_path):
    t = _trainer(tmp_path, on_nan="skip")
    w = t.model.tok_emb.weight
    w.data[0, 0] = np.inf
    before = _params(t.model)
    t.train_step()
    after = _params(t.model)
    assert t.skipped == 1 and t.step == 1
    assert all(np.array_equal(before[k], after[k]) for k in before if k != "tok_emb.weight")


def test_ctrl_c_saves_and_returns(tmp_path):
    # a shell that starts a job in the background (`cmd &`) makes it ignore SIGINT; the test
    # needs Python's own handler installed, whatever launched it
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    t = _trainer(tmp_path, max_iters=50, eval_interval=1000)
    original = t.train_step

    def step_then_interrupt():
        loss = original()
        if t.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss
    t.train_step = step_then_interrupt
    t.fit()                                 # returns instead of raising KeyboardInterrupt
    assert t.step == 3
    _, _, record = load_checkpoint(str(tmp_path / "ckpt.safetensors"))
    assert record["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGINT, outer)


def test_data_shorter_than_block_raises(tmp_path):
    tl.manual_seed(0)
    config = GPTConfig.preset("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=8,
                              vocab_size=VOCAB)
    model = GPT(config)
    with pytest.raises(ValueError, match="val_data has 8 tokens.*block_size=8"):
        Trainer(model, AdamW(model.parameters()), DATA, DATA[:8],
                TrainConfig(block_size=8, progress=False))


# ---- custom batches and losses, per-group learning rates -----------------------------------
def test_a_loss_fn_and_batch_fn_that_restate_the_defaults_train_identically(tmp_path):
    default = _trainer(tmp_path / "a", dropout=0.0)
    custom = _trainer(tmp_path / "b", dropout=0.0)
    calls = []

    def batch_fn(data, rng):
        calls.append(len(data))
        return default.windows(data, rng)

    custom.batch_fn, custom.loss_fn = batch_fn, lambda model, batch: model(*batch)[1]
    assert [default.train_step() for _ in range(3)] == [custom.train_step() for _ in range(3)]
    assert calls == [2500] * 3


def test_batches_of_anything_and_evaluation_without_val_data(tmp_path):
    """Rows of a (features, labels) pair: a classifier trained by the same loop."""
    tl.manual_seed(0)
    rng = np.random.default_rng(0)
    features = rng.standard_normal((64, 4)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int64)
    model = tl.nn.Linear(4, 2)

    def batch_fn(data, rng):
        rows = rng.integers(0, len(data[0]), 8)
        return data[0][rows], data[1][rows]

    def loss_fn(model, batch):
        return tl.nn.functional.cross_entropy(model(tl.Tensor(batch[0])), batch[1])

    config = TrainConfig(max_iters=30, learning_rate=0.1, warmup_iters=0, eval_iters=3,
                         out_dir=None, progress=False)
    t = Trainer(model, AdamW(model.parameters()), (features, labels), None, config,
                loss_fn=loss_fn, batch_fn=batch_fn)
    first = t.evaluate()
    assert set(first) == {"train"}
    losses = [t.train_step() for _ in range(30)]
    assert losses[-1] < losses[0] and t.evaluate()["train"] < first["train"]
    with pytest.raises(ValueError, match="out_dir"):
        t.fit()


def test_lr_scales_give_each_group_its_own_peak(tmp_path):
    t = _trainer(tmp_path)
    groups = t.optimizer.param_groups
    assert len(groups) == 2
    t.lr_scales = [1.0, 10.0]
    for step in range(3):
        t.train_step()
        assert groups[0]["lr"] == t.lr_at(step) and groups[1]["lr"] == t.lr_at(step) * 10.0
    with pytest.raises(ValueError, match="lr_scales has 1 factors, the optimizer 2"):
        Trainer(t.model, t.optimizer, DATA[:2500], DATA[2500:], t.config, lr_scales=[1.0])


def test_the_config_builds_its_adamw(tmp_path):
    model = _trainer(tmp_path).model
    config = TrainConfig(learning_rate=3e-3, beta1=0.8, beta2=0.95, weight_decay=0.05)
    opt = config.adamw([{"params": [model.tok_emb.weight], "weight_decay": 0.0}])
    assert opt.param_groups[0]["lr"] == 3e-3 and opt.param_groups[0]["betas"] == (0.8, 0.95)
    assert opt.param_groups[0]["weight_decay"] == 0.0      # the group's own key wins


# ---- the main example, tiny ---------------------------------------------------------------
def _example():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
    import train_shakespeare
    return train_shakespeare


TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4",
        "--eval_iters=2", "--eval_interval=3", "--sample_tokens=20", "--progress=false"]


def test_train_shakespeare_runs_and_resumes(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be: that is the question.\n" * 40)
    example = _example()
    args = TINY + [f"--data={corpus}", f"--out_dir={tmp_path / 'out'}"]
    result = example.main(args + ["--max_iters=3"])
    assert result["steps"] == 3 and np.isfinite(result["val_loss"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line)["steps"] == 3
    resumed = example.main(args + ["--max_iters=5", "--resume"])
    assert resumed["steps"] == 5
    import sample
    text = sample.main([f"--ckpt={resumed['checkpoint']}", "--prompt=To be", "--max_new_tokens=12",
                        "--seed=3"])
    assert text.startswith("To be") and len(text) == 5 + 12
    with pytest.raises(ValueError, match="n_embd"):
        example.main([a for a in args if not a.startswith("--n_embd")]
                     + ["--n_embd=32", "--max_iters=6", "--resume"])


def test_train_shakespeare_with_muon_trains_and_resumes_exactly(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be: that is the question.\n" * 40)
    example = _example()
    args = TINY + [f"--data={corpus}", "--recipe=baseline", "--optimizer=muon",
                   "--tie_embeddings=false", "--embed_lr=0.01", "--sample_tokens=0",
                   "--lr_decay_iters=4"]
    straight = example.main(args + [f"--out_dir={tmp_path / 'a'}", "--max_iters=4"])
    example.main(args + [f"--out_dir={tmp_path / 'b'}", "--max_iters=2"])
    resumed = example.main(args + [f"--out_dir={tmp_path / 'b'}", "--max_iters=4", "--resume"])
    assert straight["steps"] == resumed["steps"] == 4 and np.isfinite(straight["val_loss"])
    a, opt_a, record = load_checkpoint(straight["checkpoint"])
    b, opt_b, _ = load_checkpoint(resumed["checkpoint"])
    assert record["train_config"]["optimizer"] == "muon"
    assert [g["muon"] for g in record["optimizer"]["param_groups"]].count(True) == 1
    assert any("momentum_buffer" in k for k in opt_a)           # Muon's state was saved
    assert all(np.array_equal(a[k], b[k]) for k in a)           # resume is exact
    assert all(np.array_equal(opt_a[k], opt_b[k]) for k in opt_a)
    plain = example.main(TINY + [f"--data={corpus}", "--recipe=baseline",
                                 "--tie_embeddings=false", "--sample_tokens=0",
                                 f"--out_dir={tmp_path / 'c'}", "--max_iters=4"])
    assert plain["train_loss"] != straight["train_loss"]


def test_train_shakespeare_speedrun_recipe_is_the_default_under_the_options(tmp_path):
    from tinygrad_llm.train.recipes import SPEEDRUN_MODEL, SPEEDRUN_TRAIN
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be: that is the question.\n" * 40)
    example = _example()
    args = TINY + [f"--data={corpus}", "--sample_tokens=12", "--max_iters=2",
                   "--logit_softcap=30"]
    result = example.main(args + [f"--out_dir={tmp_path / 'a'}"])
    _, _, record = load_checkpoint(result["checkpoint"])
    train, model = record["train_config"], record["model_config"]
    assert {k: train[k] for k in SPEEDRUN_TRAIN} == SPEEDRUN_TRAIN
    assert train["warmup_iters"] == 2                    # the recipe's 75, capped by the run
    assert {k: model[k] for k in SPEEDRUN_MODEL} == {**SPEEDRUN_MODEL, "logit_softcap": 30.0}
    plain = example.main(TINY + [f"--data={corpus}", "--sample_tokens=0", "--max_iters=2",
                                 "--recipe=baseline", f"--out_dir={tmp_path / 'b'}"])
    _, _, plain_record = load_checkpoint(plain["checkpoint"])
    assert plain_record["train_config"]["optimizer"] == "adamw"
    assert not plain_record["model_config"]["qk_norm"]
    assert plain_record["model_config"]["pos"] == "learned"
    # the FLOPs: Muon's Newton-Schulz products on top of the same per-token count
    assert result["train_flops"] > plain["train_flops"] > 0
    with pytest.raises(OptionError, match="--recipe: expected one of speedrun, baseline"):
        example.main(TINY + ["--recipe=fast"])


def test_train_shakespeare_with_bpe(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TINYGRAD_LLM_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be: that is the question.\n" * 40)
    example = _example()
    args = TINY + [f"--data={corpus}", f"--out_dir={tmp_path / 'out'}", "--tokenizer=bpe",
                   "--vocab_size=280", "--max_iters=2"]
    result = example.main(args)
    assert result["tokenizer"] == "bpe" and result["vocab_size"] == 280
    # bits per character = nats per token x tokens per character / ln 2 (< nats: BPE tokens
    # hold several characters)
    assert 0 < result["val_bpc"] < result["val_loss"]
    cached = list((tmp_path / "cache" / "tokenizers").glob("bpe-*.json"))
    assert len(cached) == 1                           # trained once, remembered
    import sample
    text = sample.main([f"--ckpt={result['checkpoint']}", "--prompt=To be",
                        "--max_new_tokens=5"])
    assert text.startswith("To be")
    with pytest.raises(ValueError, match="--tokenizer must be 'char' or 'bpe', got 'wp'"):
        example.main(args + ["--tokenizer=wp"])


def test_load_model_builds_the_architecture_the_record_names(tmp_path):
    from tinygrad_llm.models import Encoder
    config = GPTConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=8, block_size=8)
    tl.manual_seed(0)
    encoder = Encoder(config)
    path = str(tmp_path / "enc.safetensors")
    save_checkpoint(path, encoder, record={"architecture": "encoder",
                                           "model_config": config.to_dict()})
    model, tokenizer, _ = load_model(path)
    assert tokenizer is None                        # the record holds none
    idx = np.array([[1, 2, 3, 4]])
    assert isinstance(model, Encoder)
    np.testing.assert_array_equal(model(idx).numpy(), encoder.eval()(idx).numpy())
    save_checkpoint(path, encoder, record={"architecture": "bert",
                                           "model_config": config.to_dict()})
    with pytest.raises(CheckpointError, match="unknown architecture 'bert'"):
        load_model(path)
