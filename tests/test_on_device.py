"""Whole workflows on "cuda", held to the GPU's budgets: what may cross to the host and when.

Without a GPU these run on the strict CuPy stand-in (tests/standin), which refuses implicit host
conversions and counts syncs, transfers and float64 upcasts: a leak-and-transfer guard, not GPU
verification (its arithmetic is NumPy's). Each result must also equal the CPU's. The references
run here (`use_kernels(False)`): the CUDA kernels have their own parity tests in tests/cuda/, and
under Numba's simulator a model's worth of launches would take minutes.

Budgets (issue 23): a training step reads the device twice (the logged loss, which is also the
non-finite check, and the clipping norm); generating a token moves no weights and reads one value
back (the sampled id); nothing is upcast to float64.
"""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.finetune import apply_lora, distillation_loss, dpo_loss, sequence_logprobs
from tinygrad_llm.generate import beam_search, generate, speculative_generate, stream
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.optim import AdamW, param_groups_for_weight_decay
from tinygrad_llm.quant import quantize
from tinygrad_llm.train import TrainConfig, Trainer

VOCAB = 11
DATA = (np.arange(3000) * 7 % VOCAB).astype(np.int64)
IDS = np.array([[1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7]])
PROMPT = np.array([[1, 2, 3]])


@pytest.fixture
def gpu(standin_cuda):
    with tl.use_kernels(False):
        yield standin_cuda


def _model(device, preset="llama", **overrides):
    tl.manual_seed(0)
    config = dict(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=VOCAB)
    config.update(overrides)
    return GPT(GPTConfig.preset(preset, **config)).to(device)


def _trainer(device, out_dir, preset):
    model = _model(device, preset, block_size=8, dropout=0.0)
    opt = AdamW(param_groups_for_weight_decay(model, 0.1), lr=1e-2)
    config = TrainConfig(batch_size=4, block_size=8, max_iters=6, eval_interval=100, eval_iters=2,
                         warmup_iters=2, seed=5, out_dir=str(out_dir), progress=False)
    return Trainer(model, opt, DATA[:2500], DATA[2500:], config, log=lambda s: None)


def _state(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_training_step_reads_the_device_twice_and_matches_the_cpu(gpu, tmp_path, preset):
    on_gpu = _trainer("cuda", tmp_path / "g", preset)
    on_cpu = _trainer("cpu", tmp_path / "c", preset)
    on_gpu.train_step()
    with gpu.measure() as c:
        loss = on_gpu.train_step()
    assert c.syncs <= 2, c.sync_sites
    assert c.upcasts == 0, c.upcast_sites
    assert c.h2d_bytes <= 2 * 4 * 8 * 8          # the batch's ids and targets, nothing else
    assert [on_cpu.train_step() for _ in range(2)][-1] == pytest.approx(loss, rel=1e-6)
    g, cpu = _state(on_gpu.model), _state(on_cpu.model)
    assert all(np.allclose(g[k], cpu[k], rtol=1e-5, atol=1e-6) for k in g)


def test_trainer_resumes_on_the_device(gpu, tmp_path):
    straight = _trainer("cuda", tmp_path / "a", "llama")
    expected = [straight.train_step() for _ in range(4)]
    first = _trainer("cuda", tmp_path / "b", "llama")
    losses = [first.train_step() for _ in range(2)]
    first.save(str(tmp_path / "mid.safetensors"))
    resumed = _trainer("cuda", tmp_path / "c", "llama")
    resumed.load(str(tmp_path / "mid.safetensors"))
    assert resumed.model.device == "cuda"
    losses += [resumed.train_step() for _ in range(2)]
    assert losses == expected


GENERATORS = {
    "greedy": lambda m: generate(m, PROMPT, 6, temperature=0),
    "sampled": lambda m: generate(m, PROMPT, 6, temperature=1.0, top_k=5, top_p=0.9, seed=1),
    "uncached": lambda m: generate(m, PROMPT, 4, temperature=0, use_cache=False),
    "stream": lambda m: np.array([list(stream(m, PROMPT, 6, temperature=0))]),
    "beam": lambda m: beam_search(m, PROMPT, 5, num_beams=2),
    "speculative": lambda m: speculative_generate(m, m, PROMPT, 6, k=2, temperature=0)[0],
}


@pytest.mark.parametrize("how", sorted(GENERATORS))
def test_generation_moves_no_weights_and_reads_one_value_per_token(gpu, how):
    model, cpu = _model("cuda"), _model("cpu")
    with gpu.measure() as c:
        out = GENERATORS[how](model)
    assert np.array_equal(np.asarray(out), np.asarray(GENERATORS[how](cpu)))
    new = {"uncached": 4, "beam": 5}.get(how, 6)
    weight_bytes = sum(p.data.nbytes for p in model.parameters())
    assert c.h2d_bytes + c.d2h_bytes < weight_bytes / 4, "weights crossed to the host"
    # one read per token; a speculative round also reads how many drafts were accepted
    assert c.syncs <= new * (2 if how in ("beam", "speculative") else 1), c.sync_sites
    assert c.upcasts == 0, c.upcast_sites


def test_batched_ragged_generation_matches_the_cpu(gpu):
    prompts = [[1, 2, 3], [4, 5]]
    out = generate(_model("cuda"), prompts, 5, temperature=0)
    want = generate(_model("cpu"), prompts, 5, temperature=0)
    assert [list(o) for o in out] == [list(w) for w in want]


# each workflow returns device results; the test reads them after measuring
def _lora_loss(device):
    model = _model(device)
    apply_lora(model, r=2)
    _, loss = model(IDS[:, :-1], IDS[:, 1:])
    loss.backward()
    return [loss] + [p.grad for p in model.parameters() if p.requires_grad]


def _qlora_loss(device):
    """QLoRA (Dettmers et al., 2023): LoRA adapters over NF4-quantized projections."""
    model = _model("cpu", n_embd=32)
    quantize(model, "nf4", group_size=32)
    model.to(device)
    apply_lora(model, r=2)
    _, loss = model(IDS[:, :-1], IDS[:, 1:])
    loss.backward()
    return [loss] + [p.grad for p in model.parameters() if p.requires_grad]


def _dpo_loss(device):
    model = _model(device)
    logp = sequence_logprobs(model, IDS, np.ones_like(IDS, bool))
    loss, stats = dpo_loss(logp, logp * 0.5, np.zeros(2, np.float32), np.full(2, 0.1, np.float32))
    loss.backward()
    return [loss, model.head.weight.grad, stats]


def _distillation_loss(device):
    student, teacher = _model(device), _model(device, n_embd=32)
    with tl.no_grad():
        teacher_logits = teacher(IDS)
    loss = distillation_loss(student(IDS), teacher_logits, IDS, temperature=2.0, alpha=0.5)
    loss.backward()
    return [loss, student.head.weight.grad]


def _moe_loss(device):
    model = _model(device, n_expert=4, n_expert_per_token=2)
    _, loss = model(IDS[:, :-1], IDS[:, 1:])
    loss.backward()
    return [loss, model.tok_emb.weight.grad]


@pytest.mark.parametrize("workflow,syncs", [(_lora_loss, 0), (_qlora_loss, 0), (_dpo_loss, 1),
                                            (_distillation_loss, 0), (_moe_loss, 0)],
                         ids=["lora", "qlora", "dpo", "distillation", "moe"])
def test_fine_tuning_workflows_stay_on_the_device(gpu, workflow, syncs):
    """syncs: DPO reads its four statistics at once (one transfer); nothing else reads."""
    with gpu.measure() as c:
        got = workflow("cuda")
    assert c.syncs <= syncs, c.sync_sites
    assert c.upcasts == 0, c.upcast_sites
    assert c.d2h_bytes <= 64, "values came back to the host"
    for g, w in zip(got, workflow("cpu")):
        if isinstance(g, dict):
            assert g == pytest.approx(w, rel=1e-5)
        else:
            assert np.allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)


def test_numpy_scalars_and_host_arrays_mix_with_device_tensors(gpu):
    x = tl.Tensor(np.arange(4, dtype=np.float32), device="cuda")
    with gpu.measure() as c:
        y = x * np.float32(2) + np.float64(1.5)
    assert y.device == "cuda" and y.dtype == np.float32 and c.upcasts == 0
    y.copy_(np.ones(4, np.float32))                    # a host array into a device tensor
    y[1:3] = np.zeros(2, np.float32)
    assert y.numpy().tolist() == [1.0, 0.0, 0.0, 1.0]
    assert tl.Tensor(x.data).device == "cuda"          # a CuPy array stays where it is
    mask = tl.Tensor(np.array([True, False, True, False]), device="cuda")
    assert x.masked_fill(mask, -1.0).numpy().tolist() == [-1.0, 1.0, -1.0, 3.0]
    model = _model("cuda")
    attn = np.zeros((1, 1, 6, 6), np.float32)
    logits = model(IDS, attn_mask=tl.Tensor(attn, device="cuda"))   # a device attn_mask
    assert logits.device == "cuda"


def test_random_tensors_are_the_same_on_both_devices(gpu):
    tl.manual_seed(3)
    u_gpu, n_gpu = tl.rand(5, 7, device="cuda"), tl.randn(4, 3, device="cuda")
    tl.manual_seed(3)
    u_cpu, n_cpu = tl.rand(5, 7), tl.randn(4, 3)
    assert np.array_equal(u_gpu.numpy(), u_cpu.numpy())        # Philox: the same bits
    assert np.allclose(n_gpu.numpy(), n_cpu.numpy(), rtol=1e-6)   # log/cos may round apart


@pytest.mark.parametrize("n_expert,k", [(4, 2), (3, 1)])
def test_moe_routes_on_the_device_without_reading_it(gpu, n_expert, k):
    """On a GPU each expert runs on a fixed N rows (its tokens, then padding), so the routing
    needs no host read; the loss, every gradient and the router losses equal the CPU's."""
    def run(device):
        model = _model(device, n_expert=n_expert, n_expert_per_token=k)
        _, loss = model(IDS[:, :-1], IDS[:, 1:])
        loss.backward()
        return model, loss
    with gpu.measure() as c:
        model, loss = run("cuda")
    assert c.syncs == 0 and c.upcasts == 0, (c.sync_sites, c.upcast_sites)
    cpu_model, cpu_loss = run("cpu")
    assert loss.item() == pytest.approx(cpu_loss.item(), rel=1e-6)
    got, want = dict(model.named_parameters()), dict(cpu_model.named_parameters())
    for name, p in want.items():
        assert np.allclose(got[name].grad.numpy(), p.grad.numpy(), rtol=1e-5, atol=1e-7), name
    moe, cpu_moe = model.blocks[0].ffn, cpu_model.blocks[0].ffn
    assert np.array_equal(moe.last_counts.get(), cpu_moe.last_counts)
