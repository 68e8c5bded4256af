"""The bench scripts' --device=cuda path, each script's main run in this process at its quickest
settings: on the CuPy stand-in without a GPU (tests/standin: NumPy's arithmetic, the CUDA
kernels under Numba's simulator), so that the scripts run correctly the first time a GPU is lent.
A smoke test of what the GPU report reads (the JSON keys, the device's name, launch counts), not a
timing. The model-level benches run with the references (`use_kernels(False)`): under the
simulator a model's worth of kernel launches would take minutes. PyTorch's side is left out here
(it needs torch with CUDA); its CPU code path is run when torch is installed.
"""
import importlib
import json
import sys
from pathlib import Path

import pytest

import tinygrad_llm as tl

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench(name):
    """A bench script as a module (each adds bench/ to sys.path itself for its siblings)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _on_the_standin(out):
    assert out["device"]["device"] == "cuda"
    assert "stand-in" in out["device"]["name"]          # getDeviceProperties(0)["name"], decoded


FAMILIES = {"cross_entropy_v7", "layer_norm", "rms_norm", "gelu_tanh", "gelu_erf", "embedding",
            "attention", "swiglu", "rope"}                # swiglu, rope: CUDA kernels only


def test_bench_ops_times_every_cuda_kernel_against_its_reference(standin_cuda, capsys):
    # every family once, at the tiny size: the asserts inside (the fast path ran on "cuda")
    # are what a GPU run relies on
    _bench("bench_ops").main(["--device=cuda", "--sizes=tiny", "--repeats=1", "--calls=1",
                              "--vocab=7", "--torch=false"])
    out = _last_json(capsys)
    _on_the_standin(out)
    assert out["calls_per_sample"] == 1 and set(out["results"]["tiny"]) == FAMILIES
    for family, entry in out["results"]["tiny"].items():
        assert set(entry) == ({"bwd"} if family == "embedding" else {"fwd", "bwd"})
        for phase in entry.values():
            assert {"kernel_ms", "reference_ms", "speedup", "kernel_launches"} <= set(phase)
            assert phase["kernel_launches"] >= 1


def test_bench_ops_times_only_the_kernels_asked_for(standin_cuda, capsys):
    _bench("bench_ops").main(["--device=cuda", "--sizes=tiny", "--repeats=1", "--calls=2",
                              "--vocab=7", "--kernels=gelu_tanh", "--torch=false"])
    out = _last_json(capsys)
    assert out["calls_per_sample"] == 2 and set(out["first_call_s"]) == {"gelu_tanh"}
    assert set(out["results"]["tiny"]) == {"gelu_tanh"}


def test_bench_train_runs_a_training_step_on_the_device(standin_cuda, capsys):
    with tl.use_kernels(False):
        _bench("bench_train").main(["--device=cuda", "--configs=a", "--repeats=1", "--rounds=1",
                                    "--torch=false", "--isolate=false", "--peak_n=32"])
    out = _last_json(capsys)
    _on_the_standin(out)
    entry = out["results"]["a"]
    assert {"ours", "reference", "speedup_vs_reference"} <= set(entry)
    assert {"ms_per_iter", "tokens_per_s", "mfu", "kernel_launches_per_step"} <= set(
        entry["ours"])
    assert out["configs"]["c"] == dict(n_layer=12, n_head=12, n_embd=768, block_size=1024,
                                       batch=8, vocab_size=50257)   # issue 23's GPT-2 small


def test_bench_decode_decodes_on_the_device(standin_cuda, capsys):
    with tl.use_kernels(False):
        _bench("bench_decode").main([
            "--device=cuda", "--models=a", "--torch=false", "--isolate=false", "--prompt=4",
            "--new_tokens=2", "--nocache_tokens_b=1", "--prefixes=6", "--steps=2",
            "--repeats=1"])
    out = _last_json(capsys)
    _on_the_standin(out)
    entry = out["results"]["a"]
    assert {"ours", "reference", "speedup_vs_reference"} <= set(entry)
    assert {"cached_tokens_per_s", "uncached_tokens_per_s", "ms_per_token_at",
            "kernel_launches_per_token"} <= set(entry["ours"])
    assert set(entry["speedup_vs_reference"]["ms_per_token_at"]) == {"6"}


def test_bench_quant_compares_q4_0_with_float16_on_the_device(standin_cuda, capsys):
    with tl.use_kernels(False):
        _bench("bench_quant").main(["--device=cuda", "--models=tiny", "--schemes=f32,f16,q4_0",
                                    "--steps=2", "--repeats=1", "--files=false"])
    out = _last_json(capsys)
    _on_the_standin(out)
    results = out["results"]["tiny"]
    for scheme in ("f32", "f16", "q4_0"):
        assert {"weight_mb", "decode_tokens_per_s", "kernel_launches_per_token",
                "decode_tokens_per_s_reference", "kernel_speedup"} <= set(results[scheme])
    assert results["f16"]["weight_mb"] < results["f32"]["weight_mb"]
    assert {"q4_0_vs_f16_speed", "q4_0_vs_f32_speed"} <= set(results)


@pytest.mark.parametrize("script", ["bench_ops", "bench_train", "bench_decode", "bench_quant"])
def test_an_unknown_device_is_one_line_and_exit_2(script, capsys):
    with pytest.raises(SystemExit) as exit_:
        _bench(script).main(["--device=tpu"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == \
        "--device: expected one of ('cpu', 'cuda'), got 'tpu'"


def test_pytorch_side_of_bench_ops_on_the_cpu(capsys):
    pytest.importorskip("torch")
    out = _bench("bench_ops").torch_results(
        {"device": "cpu", "sizes": ["tiny"], "vocab": [7], "repeats": 1, "calls": 1,
         "kernels": None})
    assert set(out["results"]["tiny"]) >= {"attention", "layer_norm", "rope", "swiglu"}
    assert set(out["results"]["tiny"]["embedding"]) == {"bwd"}


def test_a_failing_pytorch_side_keeps_our_figures(standin_cuda, capsys):
    # without a GPU PyTorch's child fails (no torch, or a torch without CUDA): what ours measured
    # stays in the JSON, with the reason
    _bench("bench_ops").main(["--device=cuda", "--sizes=tiny", "--repeats=1", "--calls=1",
                              "--vocab=7", "--kernels=gelu_tanh",
                              f"--torch_python={sys.executable}"])
    out = _last_json(capsys)
    assert out["torch_error"] and "torch" not in out
    assert set(out["results"]["tiny"]["gelu_tanh"]["fwd"]) >= {"kernel_ms", "reference_ms"}


@pytest.mark.slow
def test_bench_train_counts_muons_newton_schulz_flops(capsys):
    """On the CPU: --optimizer=muon steps Muon, and the FLOPs (and so MFU) add its Newton-Schulz
    products for each of config a's block matrices: 5 steps of 4 m^2 n + 2 m^3 for the square one,
    the Gram form's 4 m^2 n + 17 (2 m^3) for the wider ones."""
    bench = _bench("bench_train")
    args = ["--configs=a", "--repeats=1", "--rounds=1", "--torch=false", "--isolate=false",
            "--peak_n=32"]
    bench.main(args + ["--optimizer=muon"])
    out = _last_json(capsys)
    entry = out["results"]["a"]
    # per block (C = 128): qkv (128, 384), proj (128, 128), MLP up and down (128, 512)
    per_block = 5 * (4 * 128 ** 3 + 2 * 128 ** 3) + sum(
        4 * 128 ** 2 * n + 17 * 2 * 128 ** 3 for n in (384, 512, 512))
    assert out["optimizer"] == "muon"
    assert entry["newton_schulz_flops_per_step"] == 4 * per_block
    model, batch = bench.build_config("gpt2", "a")
    tokens = batch * model.config.block_size
    model_flops = bench.flops_per_token(model.config) * tokens
    assert entry["flops_per_step"] == model_flops + 4 * per_block
    peak = out["machine"]["matmul_peak_gflops"] * 1e9
    mfu = entry["flops_per_step"] / (entry["ours"]["ms_per_iter"] / 1e3) / peak
    assert entry["ours"]["mfu"] == pytest.approx(mfu, rel=0.02, abs=1e-4)
    bench.main(args)                                  # AdamW: no Newton-Schulz FLOPs
    entry = _last_json(capsys)["results"]["a"]
    assert entry["newton_schulz_flops_per_step"] == 0 and entry["flops_per_step"] == model_flops
    with pytest.raises(SystemExit, match="--optimizer: expected one of"):
        bench.main(args + ["--optimizer=lion"])
