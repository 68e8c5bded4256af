"""The training-schedule switches of the speedrun recipe: the learning-rate schedule the config
names, sequence-length and batch-size warmup (the shapes trained on, step by step, drawn from the
seed exactly as get_batch would), bit-identical resume from the middle of each warmup, the tokens
the Trainer reports, bad settings named, and defaults that keep the old batches. Then the
optimizer the config builds (optimizer_for): AdamW by default, the same groups and updates as the
construction it replaced; Muon over the expected groups; embed_lr / head_lr as lr_scales."""
import json

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.data import get_batch
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.optim import AdamW, Muon, param_groups_for_weight_decay
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


# ---- the optimizer the config builds --------------------------------------------------------
def _model(seed=0, **overrides):
    tl.manual_seed(seed)
    return GPT(GPTConfig.preset("gpt2", n_layer=2, n_head=2, n_embd=16, block_size=32,
                                vocab_size=VOCAB, **overrides))


def _steps(model, optimizer, lr_scales, n=4, **overrides):
    train = dict(batch_size=4, block_size=32, max_iters=n, warmup_iters=2, learning_rate=1e-2,
                 seed=5, out_dir=None, progress=False, **overrides)
    t = Trainer(model, optimizer, DATA[:2500], DATA[2500:], TrainConfig(**train),
                log=None, lr_scales=lr_scales)
    return [t.train_step() for _ in range(n)], t


def test_the_default_optimizer_is_the_adamw_it_replaced():
    config = TrainConfig(learning_rate=1e-2, weight_decay=0.1)
    old_model, new_model = _model(), _model()
    old = config.adamw(param_groups_for_weight_decay(old_model, 0.1))
    new, scales = config.optimizer_for(new_model)
    assert type(new) is AdamW and scales == [1.0, 1.0]
    names = {id(p): k for k, p in new_model.named_parameters()}
    old_names = {id(p): k for k, p in old_model.named_parameters()}
    assert [[names[id(p)] for p in g["params"]] for g in new.param_groups] == \
        [[old_names[id(p)] for p in g["params"]] for g in old.param_groups]
    assert [{k: v for k, v in g.items() if k != "params"} for g in new.param_groups] == \
        [{k: v for k, v in g.items() if k != "params"} for g in old.param_groups]
    losses_old, _ = _steps(old_model, old, None)
    losses_new, _ = _steps(new_model, new, scales)
    assert losses_new == losses_old
    a, b = _params(old_model), _params(new_model)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_muon_gets_the_block_matrices_and_adamw_the_rest():
    model = _model(tie_embeddings=False)
    config = TrainConfig(optimizer="muon", learning_rate=1e-2, muon_lr=2e-2, embed_lr=5e-2,
                         head_lr=4e-3, weight_decay=0.1, beta2=0.95, muon_momentum=0.9)
    opt, scales = config.optimizer_for(model)
    assert isinstance(opt, Muon) and scales == [1.0] * len(opt.param_groups)
    names = {id(p): k for k, p in model.named_parameters()}
    groups = {tuple(sorted(names[id(p)] for p in g["params"])): g for g in opt.param_groups}
    muon = [g for g in opt.param_groups if g["muon"]]
    assert len(muon) == 1 and muon[0]["momentum"] == 0.9
    assert sorted(names[id(p)] for p in muon[0]["params"]) == sorted(
        k for k, p in model.named_parameters() if k.startswith("blocks.") and p.ndim == 2)
    assert muon[0]["lr_scale"] == pytest.approx(2.0)
    embed = groups[("pos_emb.weight", "tok_emb.weight")]
    head = groups[("head.weight",)]
    assert not embed["muon"] and embed["lr_scale"] == pytest.approx(5.0)
    assert not head["muon"] and head["lr_scale"] == pytest.approx(0.4)
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups if not g["muon"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    before = _params(model)
    losses, t = _steps(model, opt, scales, n=3)
    assert all(np.isfinite(losses))
    assert muon[0]["lr"] == t.lr_at(2)                 # the schedule's lr; Muon scales it
    after = _params(model)
    assert all(not np.array_equal(before[k], after[k]) for k in before if "blocks." in k)


def test_adamw_with_embed_and_head_lrs_scales_those_groups():
    model = _model(tie_embeddings=False)
    config = TrainConfig(learning_rate=1e-2, embed_lr=3e-2, head_lr=5e-3)
    opt, scales = config.optimizer_for(model)
    assert type(opt) is AdamW
    names = [sorted(k for k, p in model.named_parameters()
                    if any(p is q for q in g["params"])) for g in opt.param_groups]
    by_name = {tuple(n): s for n, s in zip(names, scales)}
    assert by_name[("pos_emb.weight", "tok_emb.weight")] == pytest.approx(3.0)
    assert by_name[("head.weight",)] == pytest.approx(0.5)
    assert sorted(set(scales)) == pytest.approx([0.5, 1.0, 3.0])
    _, t = _steps(model, opt, scales, n=3)
    for group, scale in zip(opt.param_groups, scales):
        assert group["lr"] == t.lr_at(2) * scale


@pytest.mark.parametrize("overrides, message", [
    (dict(optimizer="sgd"), "optimizer must be one of .*, got 'sgd'"),
    (dict(muon_lr=1e-2), "muon_lr=0.01 needs optimizer='muon'"),
    (dict(embed_lr=-1.0), "embed_lr must be a positive number or None, got -1.0"),
    (dict(optimizer="muon", head_lr=0), "head_lr must be a positive number or None, got 0"),
])
def test_bad_optimizer_settings_raise_naming_them(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_head_lr_needs_an_untied_head():
    with pytest.raises(ValueError, match="head_lr=0.005 needs an untied head"):
        TrainConfig(head_lr=5e-3).optimizer_for(_model())
