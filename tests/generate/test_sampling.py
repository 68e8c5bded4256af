"""Samplers against their definitions (chi-square on frequencies), penalties as defined, and
generate(): cached == uncached, batched == alone, stops, streaming, no graph."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.generate import (SamplingConfig, apply_penalties, filter_logits, generate,
                                   next_tokens, probabilities, stream)
from tinygrad_llm.generate.sampling import sample
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.random import Generator

LOGITS = np.log(np.array([[0.05, 0.30, 0.10, 0.25, 0.02, 0.20, 0.08]]))
CHI2_P001 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46}   # df -> critical


def draws(config, n=6000, seed=0):
    logits = np.repeat(LOGITS, n, axis=0)
    ids, _ = next_tokens(logits, config, Generator("cpu", seed))
    return np.bincount(ids, minlength=LOGITS.shape[1])


def assert_follows(counts, p):
    """Zero counts outside the support of p, chi-square within it."""
    support = p > 0
    assert counts[~support].sum() == 0, f"sampled outside the allowed set: {counts}"
    expected = counts.sum() * p[support]
    chi2 = ((counts[support] - expected) ** 2 / expected).sum()
    df = int(support.sum()) - 1
    if df:
        assert chi2 < CHI2_P001[df], f"chi2 {chi2:.1f} for counts {counts}, p {p}"


def renormalised(keep):
    p = np.exp(LOGITS[0]) * keep
    return p / p.sum()


def test_greedy_is_argmax():
    ids, p = next_tokens(np.array([[0.1, 3.0, -1.0], [5.0, 1.0, 5.0]]), SamplingConfig(0.0),
                         Generator("cpu", 0))
    assert ids.tolist() == [1, 0] and p[0].tolist() == [0, 1, 0]


def test_temperature_one_samples_the_softmax():
    assert_follows(draws(SamplingConfig(1.0)), probabilities(LOGITS)[0])


def test_temperature_sharpens():
    p = probabilities(LOGITS / 0.5)[0]
    assert_follows(draws(SamplingConfig(0.5)), p)


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_top_k(k):
    keep = np.zeros(7, bool)
    keep[np.argsort(-LOGITS[0])[:k]] = True
    assert_follows(draws(SamplingConfig(1.0, top_k=k)), renormalised(keep))


@pytest.mark.parametrize("top_p, kept", [(0.25, [1]), (0.5, [1, 3]), (0.56, [1, 3, 5]),
                                         (0.9, [1, 3, 5, 2, 6]), (1.0, list(range(7)))])
def test_top_p_keeps_the_smallest_nucleus(top_p, kept):
    keep = np.zeros(7, bool)
    keep[kept] = True
    assert_follows(draws(SamplingConfig(1.0, top_p=top_p)), renormalised(keep))


def test_min_p():
    keep = np.exp(LOGITS[0]) >= 0.3 * 0.30          # min_p 0.3 x the top probability 0.30
    assert_follows(draws(SamplingConfig(1.0, min_p=0.3)), renormalised(keep))


def test_top_k_keeps_ties():
    out = filter_logits(np.array([[1.0, 2.0, 2.0, 0.0]]), top_k=1)
    assert np.isfinite(out).tolist() == [[False, True, True, False]]


def test_penalties_as_defined():
    logits = np.array([[2.0, -1.0, 0.5, 3.0]])
    counts = np.array([[2, 1, 0, 0]])
    out = apply_penalties(logits, counts, repetition_penalty=2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]          # seen: l/r if l > 0, l*r otherwise
    out = apply_penalties(logits, counts, frequency_penalty=0.5, presence_penalty=0.25)
    assert out.tolist() == [[2.0 - 1.0 - 0.25, -1.0 - 0.5 - 0.25, 0.5, 3.0]]


def test_bad_settings():
    for kw, match in [(dict(temperature=-1), "temperature"), (dict(top_k=0), "top_k"),
                      (dict(top_p=0), "top_p"), (dict(min_p=2), "min_p"),
                      (dict(repetition_penalty=0), "repetition_penalty")]:
        with pytest.raises(ValueError, match=match):
            SamplingConfig(**kw)


# ---- generate ------------------------------------------------------------------------------
def model_for(preset, seed=0, **kw):
    tl.manual_seed(seed)
    base = dict(vocab_size=31, n_layer=2, n_head=4, n_embd=16, block_size=48)
    return GPT(GPTConfig.preset(preset, **{**base, **kw})).to(dtype=np.float64)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("settings", [dict(temperature=0), dict(temperature=0.9, top_k=5),
                                      dict(temperature=1.0, top_p=0.8, min_p=0.05,
                                           repetition_penalty=1.3, presence_penalty=0.2)])
def test_cached_equals_uncached(preset, settings):
    model = model_for(preset)
    idx = np.random.default_rng(0).integers(0, 31, (3, 6))
    a = generate(model, idx, 20, use_cache=True, seed=5, **settings)
    b = generate(model, idx, 20, use_cache=False, seed=5, **settings)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_batched_ragged_prompts_equal_each_alone(preset):
    model = model_for(preset)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 31, n) for n in (3, 9, 1, 6)]
    together = generate(model, prompts, 12, temperature=0)
    for p, out in zip(prompts, together):
        alone = generate(model, p, 12, temperature=0)[0]
        np.testing.assert_array_equal(out, alone)


def test_stop_ids_and_stop_strings():
    model = model_for("llama")
    free = generate(model, np.array([[1, 2, 3]]), 15, temperature=0)[0, 3:]
    stop = int(free[4])
    out = generate(model, [np.array([1, 2, 3])], 15, temperature=0, stop_ids=[stop])[0]
    assert out[3:].tolist() == free[:free.tolist().index(stop) + 1].tolist()

    class Letters:                   # a tokenizer whose token i is the letter chr(97 + i)
        def decode(self, ids):
            return "".join(chr(97 + i) for i in ids)
    text = Letters().decode(free.tolist())
    out = generate(model, [np.array([1, 2, 3])], 15, temperature=0, stop_strings=[text[2:4]],
                   tokenizer=Letters())[0]
    assert Letters().decode(out[3:].tolist()) == text[:4]
    with pytest.raises(ValueError, match="stop_strings need a tokenizer"):
        generate(model, np.array([[1]]), 3, stop_strings=["x"])


def test_stream_yields_each_step_and_rectangular_padding():
    model = model_for("gpt2")
    idx = np.array([[1, 2], [3, 4]])
    steps = list(stream(model, idx, 6, temperature=0))
    assert len(steps) == 6 and all(s.shape == (2,) for s in steps)
    np.testing.assert_array_equal(np.stack(steps, 1), generate(model, idx, 6,
                                                               temperature=0)[:, 2:])


def test_no_graph_and_mode_restored():
    model = model_for("gpt2").train()
    out = generate(model, np.array([[1]]), 3)
    assert out.shape == (1, 4) and model.training
    assert all(p.grad is None for p in model.parameters())


def test_context_longer_than_the_model_shifts():
    model = model_for("llama", block_size=16)
    out = generate(model, np.array([[1, 2, 3]]), 40, temperature=0, context_shift=True)
    assert out.shape == (1, 43)
    ref = generate(model, np.array([[1, 2, 3]]), 13, temperature=0, use_cache=False)
    np.testing.assert_array_equal(out[:, :16], ref)         # identical until the first shift


def test_bad_prompts():
    model = model_for("gpt2")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, [np.array([1]), np.array([], dtype=int)], 3)
    with pytest.raises(ValueError, match="integer ids"):
        generate(model, np.zeros((2, 2, 2), dtype=int), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, np.array([[1]]), -1)


def test_model_generate_method():
    model = model_for("gpt2")
    np.testing.assert_array_equal(model.generate(np.array([[1, 2]]), 5, temperature=0),
                                  generate(model, np.array([[1, 2]]), 5, temperature=0))


# ---- on the device: the draw stays there, the same seed picks the same ids --------------------
SETTINGS = [dict(temperature=0), dict(temperature=0.8, top_k=5),
            dict(temperature=1.0, top_p=0.8, min_p=0.05, repetition_penalty=1.3,
                 frequency_penalty=0.1, presence_penalty=0.2)]


@pytest.mark.parametrize("settings", SETTINGS, ids=["greedy", "top_k", "top_p_penalties"])
def test_sampling_on_the_device_reads_nothing_and_matches_the_cpu(standin_cuda, settings):
    from tinygrad_llm import backend
    from tinygrad_llm.generate.sampling import next_ids
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((4, 37)) * 3).astype(np.float32)
    counts = rng.integers(0, 3, (4, 37)).astype(np.float32)
    config = SamplingConfig(**settings)
    want = next_ids(logits, config, Generator("cpu", 7), counts)
    dev_logits, dev_counts = (backend.to_device(a, "cuda") for a in (logits, counts))
    with standin_cuda.measure() as c:
        ids = next_ids(dev_logits, config, Generator("cuda", 7), dev_counts)
        ids2, p = next_tokens(dev_logits, config, Generator("cuda", 7), dev_counts)
    assert c.syncs == 0 and c.d2h_bytes == 0 and c.h2d_bytes == 0
    assert c.upcasts == 0, c.upcast_sites
    assert backend.device_of(ids) == "cuda" and p.dtype == np.float32
    np.testing.assert_array_equal(backend.to_numpy(ids), want)
    np.testing.assert_array_equal(backend.to_numpy(ids2), want)


def test_sample_never_draws_a_zero_probability_token():
    class Zero:                                   # a generator stuck at u = 0 (once in 2^24)
        def random(self, shape, dtype):
            return np.zeros(shape, dtype)

    class AlmostOne:
        def random(self, shape, dtype):
            return np.full(shape, 1 - 2.0 ** -24, dtype)
    p = np.array([[0.0, 0.0, 0.3, 0.0, 0.7, 0.0]], np.float32)
    assert sample(p, Zero()).tolist() == [2]
    assert sample(p, AlmostOne()).tolist() == [4]


@pytest.mark.parametrize("settings", SETTINGS[1:], ids=["top_k", "top_p_penalties"])
def test_generate_session_and_speculative_on_the_device_match_the_cpu(standin_cuda, settings):
    from tinygrad_llm.generate import DecodeSession
    from tinygrad_llm.generate.speculative import speculative_generate
    prompts = np.array([[1, 2, 3], [4, 5, 6]])
    with tl.use_kernels(False):              # the CUDA simulator would take minutes
        cpu, gpu = model_for("llama"), model_for("llama").to("cuda")
        np.testing.assert_array_equal(generate(gpu, prompts, 8, seed=3, **settings),
                                      generate(cpu, prompts, 8, seed=3, **settings))
        a, b = DecodeSession(cpu, seed=4, **settings), DecodeSession(gpu, seed=4, **settings)
        a.feed([1, 2])
        b.feed([1, 2])
        assert list(a.generate(6)) == list(b.generate(6))
        assert a.generator.get_state() == b.generator.get_state()
        small = {k: settings[k] for k in ("temperature", "top_k", "top_p", "min_p")
                 if k in settings}
        for seed in range(3):
            want, _ = speculative_generate(cpu, cpu, prompts[0], 6, k=2, seed=seed, **small)
            out, _ = speculative_generate(gpu, gpu, prompts[0], 6, k=2, seed=seed, **small)
            np.testing.assert_array_equal(out, want)
