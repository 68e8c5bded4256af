"""Where the decoders meet the model: GPT.generate (defined in models/gpt.py) is generate(model,
...); speculative_generate runs both models under inference() and hands them back in the modes
they came in; linear attention with shared K/V decodes through its caches to the logits of
recomputing the whole sequence (the oracle)."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import no_grad
from tinygrad_llm.generate import LinearAttentionState, generate, make_caches
from tinygrad_llm.generate.speculative import speculative_generate
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.models import gpt as gpt_module


def tiny(preset="llama", seed=0, **kw):
    tl.manual_seed(seed)
    base = dict(vocab_size=23, n_layer=2, n_head=4, n_embd=16, block_size=32)
    return GPT(GPTConfig.preset(preset, **{**base, **kw})).to(dtype=np.float64)


def test_gpt_generate_is_defined_on_the_model_and_calls_generate():
    assert GPT.__dict__["generate"].__module__ == gpt_module.__name__
    model = tiny().eval()
    idx = np.array([[3, 1, 4]])
    for kwargs in (dict(temperature=0), dict(temperature=0.8, top_k=5, seed=2)):
        np.testing.assert_array_equal(model.generate(idx, 6, **kwargs),
                                      generate(model, idx, 6, **kwargs))


@pytest.mark.parametrize("modes", [(True, False), (False, True)])
def test_speculative_generate_restores_the_models_modes(modes):
    target, draft = tiny(seed=1), tiny(seed=2, n_layer=1)
    target.train(modes[0])
    draft.train(modes[1])
    out, _ = speculative_generate(target, draft, np.array([1, 2]), 5, k=2)
    assert out.shape == (1, 7)
    assert (target.training, draft.training) == modes
    assert tl.is_grad_enabled()


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_linear_attention_with_shared_kv_decodes_like_the_full_forward(n_kv_head):
    model = tiny(attention="linear", kv_share=2, n_layer=4, n_kv_head=n_kv_head).eval()
    idx = np.random.default_rng(1).integers(0, 23, (2, 12))
    caches = make_caches(model, 2, 12)
    assert all(isinstance(c, LinearAttentionState) for c in caches)    # sharing layers too
    with no_grad():
        full = model(idx).numpy()
        pieces, start = [], 0
        for n in (5, 1, 1, 3, 1, 1):
            pieces.append(model(idx[:, start:start + n], caches=caches, offset=start).numpy())
            start += n
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=0, atol=1e-10)
