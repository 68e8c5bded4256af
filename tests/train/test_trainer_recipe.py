"""The training-schedule switches of the speedrun recipe: the learning-rate schedule the config
names, sequence-length and batch-size warmup (the shapes trained on, step by step, drawn from the
seed exactly as get_batch would), bit-identical resume from the middle of each warmup, the tokens
the Trainer reports, bad settings named, and defaults that keep the old batches."""
import json

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.data import get_batch
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.optim import AdamW, param_groups_for_weight_decay
from tinygrad_llm.optim.schedule import linear_decay, warmup_cosine, warmup_stable_decay
from tinygrad_llm.train import TrainConfig, Trainer
from tinygrad_llm.train import trainer as trainer_module
from tinygrad_llm.train.trainer import lm_loss

VOCAB = 11
DATA = (np.arange(3000) * 7 % VOCAB).astype(np.int64)


def _trainer(tmp_path, seed=0, seen=None, **overrides):
    """A 1-layer GPT over 32 positions; `seen` collects each loss call's x (B, T) array."""
    tl.manual_seed(seed)
    config = GPTConfig.preset("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=32,
                              vocab_size=VOCAB, dropout=0.1)
    model = GPT(config)
    opt = AdamW(param_groups_for_weight_decay(model, 0.1), lr=1e-2)
    train = dict(batch_size=4, block_size=32, max_iters=6, eval_interval=100, eval_iters=2,
                 warmup_iters=2, learning_rate=1e-2, seed=5, out_dir=str(tmp_path),
                 progress=False)
    train.update(overrides)

    def loss_fn(model, batch):
        if seen is not None and model.training:
            seen.append(np.array(batch[0]))
        return lm_loss(model, batch)
    return Trainer(model, opt, DATA[:2500], DATA[2500:], TrainConfig(**train),
                   log=lambda s: None, loss_fn=loss_fn)


def _params(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("schedule, reference", [
    ("cosine", lambda s: warmup_cosine(s, 1e-2, 1e-3, 10, 100)),
    ("linear", lambda s: linear_decay(s, 1e-2, 1e-3, 10, 100)),
    ("wsd", lambda s: warmup_stable_decay(s, 1e-2, 1e-3, 10, 100, decay_frac=0.3,
                                          decay="1-sqrt"))])
def test_lr_follows_the_named_schedule(tmp_path, schedule, reference):
    t = _trainer(tmp_path, learning_rate=1e-2, min_lr=1e-3, warmup_iters=10, max_iters=100,
                 lr_schedule=schedule, decay_frac=0.3, wsd_decay="1-sqrt")
    assert [t.lr_at(s) for s in range(102)] == [reference(s) for s in range(102)]
    t.train_step()
    assert all(g["lr"] == reference(0) for g in t.optimizer.param_groups)


def test_wsd_holds_the_peak_then_decays_in_training(tmp_path):
    t = _trainer(tmp_path, max_iters=10, warmup_iters=2, lr_schedule="wsd", decay_frac=0.4)
    lrs = []
    for _ in range(10):
        t.train_step()
        lrs.append(t.optimizer.param_groups[0]["lr"])
    assert lrs[:2] == pytest.approx([5e-3, 1e-2]) and lrs[2:7] == [1e-2] * 5
    assert lrs[6] > lrs[7] > lrs[8] > lrs[9] > 1e-4


def test_defaults_keep_the_old_schedule_and_batches(tmp_path):
    assert TrainConfig().lr_schedule == "cosine"
    seen = []
    t = _trainer(tmp_path, seen=seen)
    for _ in range(3):
        t.train_step()
    rng = np.random.default_rng(5)
    assert all(np.array_equal(x, get_batch(DATA[:2500], 4, 32, rng)[0]) for x in seen)
    assert [t.tokens_at(s) for s in range(3)] == [4 * 32] * 3 and t.tokens_seen() == 3 * 128


def _shapes_over_steps(tmp_path, steps, **overrides):
    seen = []
    t = _trainer(tmp_path, seen=seen, max_iters=steps, **overrides)
    for _ in range(steps):
        t.train_step()
    return t, seen


def test_sequence_length_warmup_grows_the_block_in_multiples_of_8(tmp_path):
    t, seen = _shapes_over_steps(tmp_path, 6, seq_warmup_iters=4, seq_warmup_start=8)
    assert [x.shape for x in seen] == [(4, 8), (4, 8), (4, 16), (4, 24), (4, 32), (4, 32)]
    assert [t.block_size_at(s) for s in range(6)] == [8, 8, 16, 24, 32, 32]
    # evaluation measures the full block whatever the step
    assert t.batch_fn(DATA, np.random.default_rng(0))[0].shape == (4, 32)


def test_batch_warmup_grows_the_batch(tmp_path):
    t, seen = _shapes_over_steps(tmp_path, 6, batch_warmup_iters=4, batch_warmup_start=1,
                                 grad_accum=2)
    assert [x.shape[0] for x in seen] == [1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4]
    assert all(x.shape[1] == 32 for x in seen)


def test_warmup_batches_are_drawn_from_the_seed(tmp_path):
    """Each step's windows are get_batch at that step's sizes on the one seeded stream, so two
    runs (and a replay) see the same tokens."""
    overrides = dict(seq_warmup_iters=3, batch_warmup_iters=5, batch_warmup_start=2)
    _, seen = _shapes_over_steps(tmp_path / "a", 6, **overrides)
    _, again = _shapes_over_steps(tmp_path / "b", 6, **overrides)
    rng = np.random.default_rng(5)
    sizes = [(2, 8), (2, 16), (2, 24), (3, 32), (3, 32), (4, 32)]
    replay = [get_batch(DATA[:2500], b, t, rng)[0] for b, t in sizes]
    assert [x.shape for x in seen] == sizes
    assert all(np.array_equal(a, b) and np.array_equal(a, c)
               for a, b, c in zip(seen, again, replay))


@pytest.mark.parametrize("warmup", [dict(seq_warmup_iters=5, seq_warmup_start=8),
                                    dict(batch_warmup_iters=5, batch_warmup_start=1)],
                         ids=["seq", "batch"])
def test_resume_mid_warmup_is_bit_identical(tmp_path, warmup):
    straight = _trainer(tmp_path / "a", **warmup)
    losses_straight = [straight.train_step() for _ in range(6)]

    first = _trainer(tmp_path / "b", **warmup)
    losses = [first.train_step() for _ in range(2)]            # stopped halfway up the ramp
    path = str(tmp_path / "b" / "mid.safetensors")
    first.save(path)
    tl.manual_seed(123)
    resumed = _trainer(tmp_path / "c", seed=99, **warmup)
    resumed.load(path)
    losses += [resumed.train_step() for _ in range(4)]

    assert losses == losses_straight                           # exact, dropout included
    a, b = _params(straight.model), _params(resumed.model)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    plain = _trainer(tmp_path / "d")
    assert [plain.train_step() for _ in range(6)] != losses     # the warmup changed the run


class _Bar:
    def __init__(self):
        self.postfix = []

    def update(self, n):
        pass

    def set_postfix(self, **kw):
        self.postfix.append(kw)

    def close(self):
        pass


def test_reported_tokens_count_the_actual_tokens(tmp_path, monkeypatch):
    bar, clock = _Bar(), iter(range(1000))
    monkeypatch.setattr(trainer_module, "_progress", lambda config, initial: bar)
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: float(next(clock)))
    seen = []
    t = _trainer(tmp_path, seen=seen, max_iters=6, eval_interval=3, log_interval=1,
                 seq_warmup_iters=4, batch_warmup_iters=3, batch_warmup_start=2)
    t.fit()
    actual = np.cumsum([x.size for x in seen])                 # tokens after each step
    assert list(actual) == [t.tokens_seen(s) for s in range(1, 7)]
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [(e["step"], e["tokens"]) for e in log] == [(3, actual[2]), (6, actual[5])]
    # one clock tick per log line: after step k the rate is tokens / k
    rates = [float(p["tok_s"].replace(",", "")) for p in bar.postfix]
    assert rates == [round(actual[k] / (k + 1)) for k in range(6)]


@pytest.mark.parametrize("overrides, message", [
    (dict(lr_schedule="cos"), "lr_schedule must be one of .*, got 'cos'"),
    (dict(decay_frac=0.0), r"decay_frac must be in \(0, 1\], got 0.0"),
    (dict(decay_frac=1.5), r"decay_frac must be in \(0, 1\], got 1.5"),
    (dict(wsd_decay="cosine"), "wsd_decay must be one of"),
    (dict(seq_warmup_iters=-1), "seq_warmup_iters must be >= 0, got -1"),
    (dict(seq_warmup_iters=5, seq_warmup_start=65), r"seq_warmup_start must be in \[1, "
                                                    r"block_size=64\], got 65"),
    (dict(batch_warmup_iters=5, batch_warmup_start=0), "batch_warmup_start must be in"),
])
def test_bad_settings_raise_naming_them(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_warmups_need_the_default_batches(tmp_path):
    with pytest.raises(ValueError, match="seq_warmup_iters and batch_warmup_iters"):
        Trainer(None, None, DATA, None, TrainConfig(seq_warmup_iters=3),
                batch_fn=lambda data, rng: None)
