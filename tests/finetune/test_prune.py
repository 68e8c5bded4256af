"""Pruning: the requested sparsity exactly (per layer and global), the 2:4 pattern exactly, the
largest weights kept, masks that hold through an optimizer step, and bad input."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.finetune.prune import apply_masks, magnitude_prune, prune_2_4, sparsity
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.optim import AdamW


def tiny():
    tl.manual_seed(0)
    return GPT(GPTConfig.preset("gpt2", vocab_size=30, n_layer=2, n_head=2, n_embd=32,
                                block_size=16))


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.9])
def test_magnitude_prune_hits_the_sparsity_exactly(s):
    model = tiny()
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    masks = magnitude_prune(model, s)
    modules = dict(model.named_modules())
    for name, keep in masks.items():
        w = modules[name].weight.numpy()
        assert (w == 0).sum() == int(round(s * w.size))
        kept, dropped = np.abs(before[name + ".weight"][keep]), np.abs(
            before[name + ".weight"][~keep])
        if dropped.size and kept.size:
            assert dropped.max() <= kept.min()              # the smallest ones went
    assert sparsity(model)["total"] == pytest.approx(s, abs=1e-3)
    np.testing.assert_array_equal(model.tok_emb.weight.numpy(), before["tok_emb.weight"])


def test_global_scope_prunes_across_layers():
    model = tiny()
    model.blocks[0].attn.qkv.weight.data *= 10                 # this layer's weights are large
    masks = magnitude_prune(model, 0.5, scope="global")
    total = sum(m.size for m in masks.values())
    assert sum((~m).sum() for m in masks.values()) == int(round(0.5 * total))
    assert (~masks["blocks.0.attn.qkv"]).mean() < 0.1          # large weights mostly survive


def test_2_4_pattern_is_exact():
    model = tiny()
    before = model.blocks[1].ffn.up.weight.numpy().copy()
    masks = prune_2_4(model)
    for name, keep in masks.items():
        groups = keep.reshape(keep.shape[0], -1, 4)
        assert (groups.sum(axis=2) == 2).all(), name
    w = np.abs(before).reshape(before.shape[0], -1, 4)
    kept = masks["blocks.1.ffn.up"].reshape(w.shape)
    assert (np.where(kept, w, np.inf).min(axis=2) >= np.where(kept, -np.inf, w).max(axis=2)).all()


def test_masks_hold_through_recovery_training():
    model = tiny()
    masks = magnitude_prune(model, 0.6)
    opt = AdamW(model.parameters(), lr=1e-2)
    ids = np.random.default_rng(0).integers(0, 30, (2, 16))
    _, loss = model(ids, targets=ids)
    loss.backward()
    opt.step()
    assert sparsity(model)["total"] < 0.6                     # the step moved pruned weights
    apply_masks(model, masks)
    assert sparsity(model)["total"] == pytest.approx(0.6, abs=1e-3)


def test_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        magnitude_prune(model, 1.0)
    with pytest.raises(ValueError, match="match no Linear layer; the model's Linear layers are"):
        magnitude_prune(model, 0.5, targets=["decoder.*"])
    odd = GPT(GPTConfig.preset("gpt2", vocab_size=30, n_layer=1, n_head=1, n_embd=6,
                               block_size=8))
    with pytest.raises(ValueError, match="in_features=6, not a multiple of 4"):
        prune_2_4(odd)
