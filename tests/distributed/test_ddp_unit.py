"""Data parallelism's pieces in one process: the post-accumulate-grad hook that starts a bucket's
allreduce, ZeRO-1's partition and bucket layout, the sharded norm of clip_grad_norm_, the new
TrainConfig fields' checks, the non-finite gradient check, and a one-rank ddp run that must be
bit-identical to a plain one. The 2-rank runs are in test_ddp_mpi.py."""
import importlib.util

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.distributed import DistributedDataParallel
from tinygrad_llm.distributed.ddp import _Bucket, _partition
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.nn import Parameter
from tinygrad_llm.optim import clip_grad_norm_
from tinygrad_llm.train import TrainConfig, Trainer

HAS_MPI = importlib.util.find_spec("mpi4py") is not None
DATA = np.random.default_rng(0).integers(0, 13, 3000)


# ---- the hook --------------------------------------------------------------------------------
def test_hook_fires_once_per_backward_with_every_contribution_in():
    w = Parameter(np.array([1.0, 2.0]))
    seen = []
    w.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.numpy().copy()))
    ((w * 3.0).sum() + (w * w).sum()).backward()          # two paths into w: one call, the sum
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], [5.0, 7.0])
    (w * 2.0).sum().backward()                             # accumulates: the hook sees the total
    np.testing.assert_allclose(seen[1], [7.0, 9.0])


def test_hooked_leaf_finishes_before_backward_reaches_earlier_layers():
    w1, w2 = Parameter(np.array([2.0])), Parameter(np.array([3.0]))
    events = []
    w2.register_post_accumulate_grad_hook(lambda p: events.append(("w2", p.grad.item())))
    w1.register_post_accumulate_grad_hook(lambda p: events.append(("w1", p.grad.item())))
    x = tl.Tensor(np.array([5.0]), requires_grad=True)
    ((x * w1) * w2).sum().backward()                      # w2's consumer is the last op
    assert events == [("w2", 10.0), ("w1", 15.0)]


def test_hook_remove_and_bad_hooks():
    w = Parameter(np.ones(3))
    calls = []
    handle = w.register_post_accumulate_grad_hook(lambda p: calls.append(1))
    handle.remove()
    w.sum().backward()
    assert calls == []
    with pytest.raises(TypeError, match="hook must be callable, got int"):
        w.register_post_accumulate_grad_hook(3)
    with pytest.raises(RuntimeError, match="only a leaf tensor"):
        (w * 2.0).register_post_accumulate_grad_hook(lambda p: None)


# ---- ZeRO-1's partition and bucket layout ----------------------------------------------------
def test_partition_is_balanced_deterministic_and_total():
    sizes = [400, 7, 300, 300, 5, 120, 64, 64, 1]
    params = [Parameter(np.zeros(n)) for n in sizes]
    owners = _partition(params, 3)
    assert owners == _partition(params, 3)
    assert set(owners) == {id(p) for p in params}
    loads = [sum(p.numel() for p in params if owners[id(p)] == r) for r in range(3)]
    assert max(loads) - min(loads) <= max(sizes)
    assert sum(loads) == sum(sizes)


def test_zero_bucket_gives_each_rank_one_padded_segment():
    params = [Parameter(np.zeros(n)) for n in (5, 3, 4, 1)]
    owners = {id(params[0]): 1, id(params[1]): 0, id(params[2]): 1, id(params[3]): 0}
    bucket = _Bucket(params, owners, 2, np)
    assert bucket.segment == 9                            # rank 1 owns 5 + 4, rank 0 owns 3 + 1
    assert bucket.flat.size == 18 and bucket.shard.size == 9
    for p, (lo, hi) in zip(bucket.params, bucket.spans):
        rank = owners[id(p)]
        assert rank * 9 <= lo < hi <= (rank + 1) * 9 and hi - lo == p.numel()
    spans = sorted(bucket.spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_plain_bucket_is_end_to_end():
    params = [Parameter(np.zeros(n)) for n in (5, 3)]
    bucket = _Bucket(params, None, 2, np)
    assert bucket.spans == [(0, 5), (5, 8)] and bucket.flat.size == 8 and bucket.shard is None


# ---- clipping a sharded gradient ---------------------------------------------------------------
def test_clip_grad_norm_sums_squares_over_shards():
    p = Parameter(np.array([3.0, 4.0]))
    p.grad = tl.Tensor(np.array([3.0, 4.0]))
    norm = clip_grad_norm_([p], 100.0, reduce_sum_squares=lambda s: s + 144.0)   # another 12
    assert norm == pytest.approx(13.0)
    norm = clip_grad_norm_([p], 1.0, reduce_sum_squares=lambda s: s + 144.0)
    np.testing.assert_allclose(p.grad.numpy(), np.array([3.0, 4.0]) / 13.0, rtol=1e-6)


# ---- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    (dict(zero=True), "zero=True shards the optimizer over the ranks of a ddp run"),
    (dict(ddp=True, batch_warmup_iters=10), "batch_warmup_iters must be 0, got 10"),
    (dict(ddp=True, zero=True, dtype="float16"), "zero=True with dtype='float16'"),
    (dict(ddp=True, bucket_mb=0), "bucket_mb must be a positive number, got 0"),
    (dict(ddp=True, ddp_timeout_s=-1.0), "ddp_timeout_s must be a positive number, got -1.0"),
])
def test_train_config_refuses_bad_ddp_fields(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**fields)


def _trainer(tmp_path, **train):
    tl.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=16,
                          dropout=0.0, qk_norm=True, mlp="relu2"))
    config = TrainConfig(batch_size=4, block_size=8, max_iters=100, warmup_iters=2,
                         eval_iters=2, progress=False, out_dir=str(tmp_path), **train)
    optimizer, scales = config.optimizer_for(model)
    return Trainer(model, optimizer, DATA[:2500], DATA[2500:], config, lr_scales=scales,
                   log=None)


@pytest.mark.skipif(not HAS_MPI, reason="needs mpi4py (the mpi extra)")
@pytest.mark.parametrize("zero", [False, True])
def test_one_rank_ddp_is_bit_identical_to_plain_training(tmp_path, zero):
    plain = _trainer(tmp_path / "plain", optimizer="muon")
    ddp = _trainer(tmp_path / "ddp", optimizer="muon", ddp=True, zero=zero, bucket_mb=0.001)
    assert ddp.world_size == 1 and len(ddp.ddp.buckets) > 1
    for _ in range(3):
        assert plain.train_step() == ddp.train_step()
    assert plain.evaluate() == ddp.evaluate()
    for (name, a), (_, b) in zip(plain.model.named_parameters(), ddp.model.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


@pytest.mark.skipif(not HAS_MPI, reason="needs mpi4py (the mpi extra)")
def test_ddp_refuses_a_second_backward_before_finish(tmp_path):
    trainer = _trainer(tmp_path, ddp=True)
    x = tl.Tensor(DATA[:16].reshape(2, 8))
    trainer.model(x, x)[1].backward()
    with pytest.raises(RuntimeError, match="a second backward reached the parameters"):
        trainer.model(x, x)[1].backward()
    trainer.ddp.finish_gradients()


@pytest.mark.skipif(not HAS_MPI, reason="needs mpi4py (the mpi extra)")
def test_ddp_checks_bucket_size(tmp_path):
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match="bucket_cap_mb must be a positive number of megabytes, "
                                         "got -2"):
        DistributedDataParallel(trainer.model, bucket_cap_mb=-2)


# ---- a finite loss with a non-finite gradient -------------------------------------------------
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # the NaN made on purpose
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize("on_nan", ["stop", "skip"])
def test_non_finite_gradient_norm_is_caught(tmp_path, on_nan):
    trainer = _trainer(tmp_path, on_nan=on_nan)
    weight = next(iter(trainer.model.parameters()))

    def loss_fn(model, batch):                 # sqrt at 0: a finite loss, a NaN gradient
        x, y = batch
        return model(x, y)[1] + (weight.sum() * 0.0).sqrt()

    trainer.loss_fn = loss_fn
    before = weight.numpy().copy()
    if on_nan == "stop":
        with pytest.raises(FloatingPointError, match="training gradient norm is nan at step 0"):
            trainer.train_step()
    else:
        trainer.train_step()
        assert trainer.skipped == 1 and trainer.step == 1
    np.testing.assert_array_equal(weight.numpy(), before)


@pytest.mark.skipif(not HAS_MPI, reason="needs mpi4py (the mpi extra)")
def test_buckets_start_inside_backward_and_not_under_no_sync(tmp_path):
    trainer = _trainer(tmp_path, ddp=True, bucket_mb=0.001)
    ddp, x = trainer.ddp, tl.Tensor(DATA[:16].reshape(2, 8))
    with ddp.no_sync():
        trainer.model(x, x)[1].backward()
    assert ddp._started == []                              # accumulation: nothing sent
    trainer.model(x, x)[1].backward()
    # every bucket's reduction was started by the hooks while backward ran, roughly in
    # backward's order: the token table (the first op's weight, tied to the head) last, the
    # layers' buckets before it (a hooked leaf finishes right after its last consumer, not
    # where the topological order would reach it: for every weight, the very end)
    assert len(ddp._started) == len(ddp.buckets) > 2
    table = trainer.model.tok_emb.weight
    last_two = ddp._started[-2].params + ddp._started[-1].params
    assert any(p is table for p in last_two)
    assert not any(p is table for p in ddp._started[0].params)
    ddp.finish_gradients()
    assert ddp._started == [] and all(b.handle is None for b in ddp.buckets)
