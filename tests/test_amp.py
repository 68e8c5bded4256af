"""Mixed precision (amp.py, optim/scaler.py, backend.allow_tf32): float16 matmuls over float32
masters, dynamic loss scaling, the --dtype option and the TF32 switch.

On the CPU float16 is NumPy's (no BLAS: a slow loop), so the models here are tiny. The "cuda"
cases run on the CuPy stand-in with the references (use_kernels(False)), as tests/test_on_device.py
does: they check that autocast and the scaler keep the step's budget (two reads, no float64, no
uploads), not GPU numerics.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import standin
import tinygrad_llm as tl
from tinygrad_llm import amp, kernels, nn
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.ops import CastOp, LinearOp
from tinygrad_llm.optim import (SGD, AdamW, GradScaler, clip_grad_norm_,
                                param_groups_for_weight_decay)
from tinygrad_llm.train import OptionError, TrainConfig, Trainer, load_checkpoint

VOCAB = 11
DATA = (np.arange(3000) * 7 % VOCAB).astype(np.int64)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _trainer(out_dir, dtype, device="cpu", **overrides):
    tl.manual_seed(0)
    config = GPTConfig.preset("gpt2", n_layer=2, n_head=2, n_embd=16, block_size=8,
                              vocab_size=VOCAB)
    model = GPT(config).to(device)
    opt = AdamW(param_groups_for_weight_decay(model, 0.1), lr=1e-2)
    train = dict(batch_size=4, block_size=8, max_iters=100, eval_interval=100, eval_iters=2,
                 warmup_iters=2, learning_rate=1e-2, seed=5, out_dir=str(out_dir),
                 progress=False, dtype=dtype)
    train.update(overrides)
    return Trainer(model, opt, DATA[:2500], DATA[2500:], TrainConfig(**train),
                   record={"model_config": config.to_dict()}, log=lambda s: None)


def _grads(model):
    return {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}


# ---- autocast ---------------------------------------------------------------------------------
def test_linear_multiplies_in_float16_and_gives_float32_gradients_to_the_masters():
    layer = nn.Linear(24, 8)
    x = tl.randn(3, 5, 24, requires_grad=True)
    dy = np.random.default_rng(1).standard_normal((3, 5, 8)).astype(np.float32)
    ref = layer(x)
    ref.backward(dy)
    ref_grads = (x.grad.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy())
    x.grad = layer.weight.grad = layer.bias.grad = None
    with tl.autocast("float16"):
        y = layer(x)
    assert y.dtype == np.float32 and layer.weight.dtype == np.float32
    product = y._node.parents[0]                       # y = float32(LinearOp(...))
    assert isinstance(y._node, CastOp) and isinstance(product._node, LinearOp)
    assert product.dtype == np.float16
    assert all(p.dtype == np.float16 for p in product._node.parents)   # x, W, b as float16
    np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-2, atol=1e-2)
    y.backward(dy)
    grads = (x.grad, layer.weight.grad, layer.bias.grad)
    assert all(g.dtype == np.float32 for g in grads)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g.numpy(), r, rtol=2e-2, atol=2e-2)


def test_float64_and_autocast_off_are_untouched_so_gradcheck_stays_float64():
    layer = nn.Linear(4, 3, dtype=np.float64)
    x = tl.Tensor(np.random.default_rng(0).standard_normal((2, 4)), requires_grad=True)
    with tl.autocast("float16"):
        y = layer(x)
        assert y.dtype == np.float64 and isinstance(y._node, LinearOp)   # no cast
        assert tl.gradcheck(lambda a, w, b: layer(a), x, layer.weight, layer.bias)
        with tl.autocast("float32"):                   # float32 (or enabled=False): off
            assert amp.autocast_dtype() is None
        with tl.autocast("float16", enabled=False):
            assert amp.autocast_dtype() is None
        assert amp.autocast_dtype() == np.float16
    assert amp.autocast_dtype() is None


def test_only_the_matmuls_change_the_fused_kernels_still_run():
    tl.manual_seed(0)
    model = GPT(GPTConfig.preset("llama", n_layer=1, n_head=2, n_embd=16, block_size=8,
                                 vocab_size=VOCAB))
    idx = np.arange(16).reshape(2, 8) % VOCAB
    with kernels.trace() as plain:
        logits32, loss32 = model(idx, (idx + 1) % VOCAB)
    with kernels.trace() as mixed, tl.autocast("float16"):
        logits16, loss16 = model(idx, (idx + 1) % VOCAB)
    assert mixed == plain                              # the same kernels, the same fast paths
    assert logits16.dtype == loss16.dtype == np.float32
    assert loss16.item() == pytest.approx(loss32.item(), rel=1e-2)


def test_without_autograd_each_weight_is_cast_once_per_block_and_again_when_it_changes():
    layer = nn.Linear(6, 4)
    x = tl.randn(2, 6)
    with tl.no_grad(), tl.autocast("float16"):
        y1 = layer(x)
        copy = amp._cache[id(layer.weight)].copy
        y2 = layer(x)
        assert amp._cache[id(layer.weight)].copy is copy          # cached, not cast again
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
        layer.weight.add_(1.0)                                    # the version counter moves
        y3 = layer(x)
        assert amp._cache[id(layer.weight)].copy is not copy
        np.testing.assert_allclose(y3.numpy(), layer(x).numpy())
        assert not np.allclose(y3.numpy(), y1.numpy())
        layer.weight.data = layer.weight.data * 2                 # the array is replaced
        y4 = layer(x)
    np.testing.assert_allclose(y4.numpy(), (x @ layer.weight.T + layer.bias).numpy(),
                               rtol=1e-2, atol=1e-2)
    with tl.autocast("float16"):                                  # recording: cast per call
        layer(x)
        assert amp._cache == {}


def test_bfloat16_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)           # as if not installed
    with pytest.raises(ValueError, match="bfloat16 needs the ml_dtypes package"):
        tl.autocast("bfloat16")
    assert "ml_dtypes" in amp.dtype_problem("bfloat16", "cuda")
    with pytest.raises(ValueError, match="ml_dtypes"):
        _trainer(tmp_path, "bfloat16")
    with pytest.raises(ValueError, match=r"dtype must be one of .*'float8'"):
        TrainConfig(dtype="float8")
    with pytest.raises(ValueError, match="expected one of"):
        tl.autocast("half")


def test_bfloat16_linear_where_ml_dtypes_is_installed():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    layer = nn.Linear(8, 4)
    x = tl.randn(3, 8, requires_grad=True)
    ref = layer(x).numpy()
    with tl.autocast("bfloat16"):
        y = layer(x)
    assert y.dtype == np.float32 and amp.resolve_dtype("bfloat16") == ml_dtypes.bfloat16
    np.testing.assert_allclose(y.numpy(), ref, rtol=5e-2, atol=5e-2)
    y.sum().backward()
    assert layer.weight.grad.dtype == np.float32


# ---- training: float16 with loss scaling against float32 ----------------------------------------
def test_float16_training_tracks_float32(tmp_path):
    plain = _trainer(tmp_path / "a", "float32")
    mixed = _trainer(tmp_path / "b", "float16")
    assert plain.scaler is None and mixed.scaler.get_scale() == 2.0 ** 16
    a = [plain.train_step() for _ in range(8)]
    b = [mixed.train_step() for _ in range(8)]
    assert a[-1] < a[0] - 0.3                                      # it learns
    np.testing.assert_allclose(b, a, rtol=5e-3)
    assert mixed.scaler.growth_tracker == 8                        # no overflow at 2^16
    assert all(p.dtype == np.float32 for p in mixed.model.parameters())


def test_float16_step_keeps_the_device_budget(standin_cuda, tmp_path):
    with tl.use_kernels(False):
        on_gpu = _trainer(tmp_path / "g", "float16", device="cuda")
        on_cpu = _trainer(tmp_path / "c", "float16")
        on_gpu.train_step()
        with standin_cuda.measure() as c:
            loss = on_gpu.train_step()
        assert c.syncs <= 2, c.sync_sites                      # the loss, the clipping norm
        assert c.upcasts == 0, c.upcast_sites
        assert c.h2d_bytes <= 2 * 4 * 8 * 8                    # the batch's ids and targets
        assert [on_cpu.train_step() for _ in range(2)][-1] == pytest.approx(loss, rel=1e-5)
        with standin_cuda.measure() as c:                      # and without clipping
            on_gpu.config.grad_clip = 0.0
            on_gpu.train_step()
        assert c.syncs <= 2, c.sync_sites


# ---- the scaler ---------------------------------------------------------------------------------
def _one_param(grad):
    p = nn.Parameter(np.zeros(3, dtype=np.float32))
    p.grad = tl.Tensor(np.asarray(grad, dtype=np.float32))
    return p, SGD([p], lr=1.0)


def test_scaler_unscales_and_clips_in_one_pass_like_clip_grad_norm():
    scaler = GradScaler(init_scale=8.0)
    p, opt = _one_param([3.0 * 8, 4.0 * 8, 0.0])                 # a scaled gradient, norm 5 * 8
    assert scaler.unscale_(opt, max_norm=1.0) == pytest.approx(5.0)
    q, _ = _one_param([3.0, 4.0, 0.0])
    clip_grad_norm_([q], 1.0)
    np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-6)
    assert scaler.step(opt) and scaler.found_inf is False
    np.testing.assert_allclose(p.numpy(), -q.grad.numpy(), rtol=1e-6)
    scaler.update()
    with pytest.raises(RuntimeError, match="no unscale_"):
        scaler.update()
    p, opt = _one_param([16.0, 0.0, 0.0])
    assert scaler.unscale_(opt) == 2.0 and p.grad.numpy()[0] == 2.0     # exact: S = 2^3
    with pytest.raises(RuntimeError, match="already called"):
        scaler.unscale_(opt)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_scaler_skips_an_overflowed_step_and_lowers_the_scale(bad):
    scaler = GradScaler(init_scale=1024.0, growth_interval=3)
    p, opt = _one_param([1.0, bad, 2.0])
    assert not np.isfinite(scaler.unscale_(opt, max_norm=1.0))
    assert scaler.step(opt) is False
    np.testing.assert_array_equal(p.numpy(), np.zeros(3))              # no update
    assert 1 not in opt.state and 0 not in opt.state
    scaler.update()
    assert scaler.get_scale() == 512.0 and scaler.growth_tracker == 0


def test_scaler_raises_the_scale_after_growth_interval_good_steps():
    scaler = GradScaler(init_scale=4.0, growth_interval=3)
    for step in range(7):
        _, opt = _one_param([1.0, 1.0, 1.0])
        assert scaler.step(opt)                                   # step() unscales if needed
        scaler.update()
        assert scaler.get_scale() == (4.0 if step < 2 else 8.0 if step < 5 else 16.0)


def test_scaler_arguments_are_checked():
    for kw, match in [({"init_scale": 0}, "init_scale"), ({"growth_factor": 0.5}, "> 1"),
                      ({"backoff_factor": 2.0}, "< 1"), ({"growth_interval": 0}, ">= 1")]:
        with pytest.raises(ValueError, match=match):
            GradScaler(**kw)
    with pytest.raises(ValueError, match="keys"):
        GradScaler().load_state_dict({"scale": 2.0})
    disabled = GradScaler(enabled=False)
    loss = tl.Tensor(np.float32(3.0))
    assert disabled.scale(loss) is loss and disabled.get_scale() == 1.0


@pytest.mark.filterwarnings("ignore:.*(overflow|invalid value).*:RuntimeWarning")  # forced overflow
def test_trainer_skips_overflows_and_keeps_the_scale_in_the_checkpoint(tmp_path):
    trainer = _trainer(tmp_path / "a", "float16")
    trainer.scaler.scale_value = 2.0 ** 40       # float16 gradients overflow: inf, step skipped
    before = {n: p.numpy().copy() for n, p in trainer.model.named_parameters()}
    loss = trainer.train_step()
    assert np.isfinite(loss) and trainer.scaler.get_scale() == 2.0 ** 39
    after = {n: p.numpy() for n, p in trainer.model.named_parameters()}
    assert all(np.array_equal(before[n], after[n]) for n in before)
    for _ in range(40):                          # it backs off until the steps go through
        trainer.train_step()
    assert trainer.scaler.growth_tracker > 0 and trainer.scaler.get_scale() < 2.0 ** 20
    state = trainer.scaler.state_dict()
    path = str(tmp_path / "a" / "mid.safetensors")
    trainer.save(path)
    assert load_checkpoint(path)[2]["scaler"] == state
    expected = [trainer.train_step() for _ in range(3)]
    resumed = _trainer(tmp_path / "b", "float16")
    resumed.load(path)
    assert resumed.scaler.state_dict() == state
    assert [resumed.train_step() for _ in range(3)] == expected     # bit-identical resume


# ---- TF32 ---------------------------------------------------------------------------------------
def test_allow_tf32_sets_cupys_compute_type(standin_cuda):
    api = json.loads((Path(standin.__file__).parent / "cupy_api.json").read_text())
    core = standin.cupy._core
    public = {n for n in vars(core) if not n.startswith("_")}
    assert public <= set(api["cupy._core"])
    assert {n for n in vars(core._routines_linalg) if not n.startswith("_")} \
        <= set(api["cupy._core._routines_linalg"])
    float32 = "float32"
    standin.compute_types.clear()
    tl.backend.check_device("cuda")                   # CuPy loaded, the switch never touched
    assert float32 not in standin.compute_types
    with tl.backend.allow_tf32(True):
        assert standin.compute_types[float32] == core._routines_linalg.COMPUTE_TYPE_TF32
        assert tl.backend.tf32_allowed()
    assert standin.compute_types[float32] == core._routines_linalg.COMPUTE_TYPE_DEFAULT
    assert not tl.backend.tf32_allowed()


def test_allow_tf32_before_cupy_loads_applies_when_it_does(monkeypatch):
    monkeypatch.setattr(tl.backend, "_tf32", None)
    with tl.backend.allow_tf32(True):                 # the CPU: nothing to set, nothing fails
        assert tl.backend.tf32_allowed()
        if standin.HAS_GPU:
            return
        standin.compute_types.clear()
        standin.install()
        try:
            tl.backend.check_device("cuda")
            assert standin.compute_types["float32"] == 7
        finally:
            standin.uninstall()


# ---- the examples' --dtype ----------------------------------------------------------------------
def _example(name):
    sys.path.insert(0, str(EXAMPLES))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(EXAMPLES))


TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4",
        "--eval_iters=2", "--eval_interval=3", "--sample_tokens=5", "--progress=false"]


def test_dtype_option_refuses_what_cannot_run_in_one_line(tmp_path, monkeypatch):
    train, sample, chat = (_example(n) for n in ("train_shakespeare", "sample", "chat"))
    with pytest.raises(OptionError, match=r"--dtype=float16: float16 is for device 'cuda'"):
        train.main(["--dtype=float16", f"--out_dir={tmp_path}"])
    with pytest.raises(OptionError, match="--dtype=float8: dtype: expected one of"):
        sample.main(["--dtype=float8"])
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(OptionError, match="--dtype=bfloat16: bfloat16 needs the ml_dtypes"):
        chat.main(["--dtype=bfloat16", "--device=cuda"])
    monkeypatch.setattr(sys, "argv", ["train_shakespeare.py"])
    with pytest.raises(SystemExit) as exit_:
        tl.train.run_main(train.main, ["--dtype=bfloat16", "--device=cpu"])
    assert exit_.value.code == 2


def test_train_and_sample_with_float16_on_the_device(standin_cuda, tmp_path, monkeypatch):
    monkeypatch.setattr(tl.backend, "_tf32", None)     # --tf32 sets it: restored after the test
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be: that is the question.\n" * 40)
    train, sample = _example("train_shakespeare"), _example("sample")
    with tl.use_kernels(False):
        result = train.main(TINY + [f"--data={corpus}", f"--out_dir={tmp_path / 'out'}",
                                    "--device=cuda", "--dtype=float16", "--max_iters=3",
                                    "--tf32"])
        assert result["dtype"] == "float16" and np.isfinite(result["val_loss"])
        assert standin.compute_types["float32"] == 7                  # COMPUTE_TYPE_TF32
        _, _, record = load_checkpoint(result["checkpoint"])
        assert record["scaler"]["scale"] == 2.0 ** 16
        text = sample.main([f"--ckpt={result['checkpoint']}", "--prompt=To be",
                            "--max_new_tokens=4", "--device=cuda", "--dtype=float16"])
    assert text.startswith("To be") and len(text) == 5 + 4
    assert os.path.exists(result["checkpoint"])
