"""Compile ahead (train/warmup.py): the helper process compiles exactly the backward kernels of
the model it is given, it starts only when the first step compiles something, it is stopped when
that step ends, and the Trainer uses it for its first step alone."""
import contextlib
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

import tinygrad_llm as tl
from tinygrad_llm.models import GPT, Encoder, GPTConfig
from tinygrad_llm.optim import AdamW
from tinygrad_llm.train import TrainConfig, Trainer
from tinygrad_llm.train import trainer as trainer_module
from tinygrad_llm.train import warmup

CONFIG = GPTConfig.preset("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11)


def test_the_spec_rebuilds_a_gpt_on_the_cpu_with_kernels(monkeypatch):
    monkeypatch.delenv(warmup.ENV, raising=False)
    model = GPT(CONFIG)
    spec = warmup.helper_spec(model)
    assert spec == {"model_config": CONFIG.to_dict(), "dtype": "float32"}
    assert GPTConfig(**json.loads(json.dumps(spec))["model_config"]) == CONFIG
    assert warmup.helper_spec(model.to(dtype=np.float64))["dtype"] == "float64"
    with tl.use_kernels(False):
        assert warmup.helper_spec(model) is None
    assert warmup.helper_spec(Encoder(CONFIG)) is None          # only GPTs are rebuilt
    monkeypatch.setenv(warmup.ENV, "0")
    assert warmup.helper_spec(model) is None


def _index_files(cache_dir, loop):
    return glob.glob(os.path.join(cache_dir, "**", f"*{loop}*.nbi"), recursive=True)


def test_the_helper_compiles_the_backward_loops_and_no_forward_loop(tmp_path):
    cache = str(tmp_path / "numba_cache")
    spec = warmup.helper_spec(GPT(GPTConfig.preset(
        "gpt2", n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11, qk_norm=True,
        pos="rope", mlp="relu2")))
    env = dict(warmup._helper_env(), NUMBA_CACHE_DIR=cache)
    subprocess.run([sys.executable, "-m", "tinygrad_llm.train.warmup", json.dumps(spec)],
                   env=env, check=True, timeout=300, cwd=str(tmp_path))
    for loop in ("_attention_backward_loop", "_cross_entropy_backward_loop",
                 "_layer_norm_backward_loop", "_qk_norm_rope_backward_loop",
                 "_relu2_backward_loop", "_embedding_backward_loop"):
        assert _index_files(cache, loop), f"the helper did not compile {loop}"
    for loop in ("_attention_forward_loop", "_cross_entropy_forward_loop",
                 "_layer_norm_forward_loop"):
        assert not _index_files(cache, loop), f"the helper compiled {loop}"


class FakeHelper:
    started = []

    def __init__(self, args, **kwargs):
        self.args, self.env, self.stopped = args, kwargs["env"], False
        FakeHelper.started.append(self)

    def poll(self):
        return None                               # still running when the step ends

    def terminate(self):
        self.stopped = True

    def wait(self):
        return 0


@pytest.fixture
def fake_popen(monkeypatch):
    monkeypatch.delenv(warmup.ENV, raising=False)
    FakeHelper.started = []
    monkeypatch.setattr(warmup.subprocess, "Popen", FakeHelper)
    return FakeHelper.started


def test_the_helper_starts_at_the_first_compile_and_stops_with_the_block(fake_popen):
    model = GPT(CONFIG)
    with warmup.backward_compiled_ahead(model):
        pass                                      # nothing compiled: no helper
    assert fake_popen == []

    def fresh(x):                                 # a function no cache holds: it compiles
        return x + 1
    with warmup.backward_compiled_ahead(model):
        njit(fresh)(1)
        njit(lambda x: x * 2)(1)                  # a second compile starts no second helper
    assert len(fake_popen) == 1
    helper = fake_popen[0]
    assert helper.args[1:3] == ["-m", "tinygrad_llm.train.warmup"]
    assert json.loads(helper.args[3]) == warmup.helper_spec(model)
    assert helper.env["NUMBA_NUM_THREADS"] == "1" and helper.env[warmup.ENV] == "0"
    assert helper.stopped                         # still running at the end: stopped


def test_the_trainer_compiles_ahead_on_its_first_step_only(tmp_path, monkeypatch):
    steps = []

    @contextlib.contextmanager
    def recording(model):
        steps.append(model)
        yield
    monkeypatch.setattr(trainer_module, "backward_compiled_ahead", recording)
    model = GPT(CONFIG)
    data = (np.arange(400) % 11).astype(np.int64)
    trainer = Trainer(model, AdamW(model.parameters(), lr=1e-3), data, data,
                      TrainConfig(batch_size=2, block_size=8, max_iters=3, out_dir=str(tmp_path),
                                  progress=False), log=None)
    losses = [trainer.train_step() for _ in range(3)]
    assert steps == [model] and all(np.isfinite(losses))
