"""SFT data: the loss covers only the assistant's tokens, packing keeps whole examples, restarts
positions, hides other examples (a packed block gives each example exactly the loss it has
alone), and malformed records raise naming the record and field."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import no_grad
from tinygrad_llm.finetune import SFTBatcher, pack_examples, sft_example
from tinygrad_llm.finetune.sft import segment_mask
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.tokenizers import CHAT_SPECIAL_TOKENS, BPETokenizer, ChatTemplate

TEXT = "Who speaks this line? ROMEO speaks it. Continue the line: to be or not to be.\n" * 20


@pytest.fixture(scope="module")
def template():
    return ChatTemplate(BPETokenizer.train(TEXT, vocab_size=300,
                                           special_tokens=CHAT_SPECIAL_TOKENS))


RECORDS = [{"prompt": "Who speaks this line?", "response": "ROMEO"},
           {"prompt": "Continue the line:", "response": "to be or not to be"},
           {"system": "Answer briefly.", "prompt": "Who?", "response": "ROMEO speaks it."}]


def test_loss_only_on_assistant_tokens(template):
    inputs, targets = sft_example(template, RECORDS[0])
    ids, learn = template.render([{"role": "user", "content": RECORDS[0]["prompt"]},
                                  {"role": "assistant", "content": RECORDS[0]["response"]}])
    np.testing.assert_array_equal(inputs, ids[:-1])
    learned = targets != -100
    np.testing.assert_array_equal(learned, learn[1:])
    np.testing.assert_array_equal(targets[learned], ids[1:][learn[1:]])
    response = template.tokenizer.encode_ordinary(RECORDS[0]["response"])
    assert targets[learned].tolist() == list(response) + [template.end_id]


def test_packing_keeps_whole_examples_and_restarts_positions(template):
    examples = [sft_example(template, r, i) for i, r in enumerate(RECORDS * 3)]
    inputs, targets, segments, positions = pack_examples(examples, block_size=48)
    assert inputs.shape[1] == 48
    total = sum(len(x) for x, _ in examples)
    assert (targets != -100).sum() == sum((y != -100).sum() for _, y in examples)
    assert sum((segments[b] < segments[b].max()).sum() for b in range(len(segments))) >= total - 1
    for b in range(len(inputs)):
        for s in np.unique(segments[b]):
            where = np.flatnonzero(segments[b] == s)
            np.testing.assert_array_equal(positions[b, where], np.arange(len(where)))


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_packed_loss_equals_each_example_alone(template, preset):
    tl.manual_seed(0)
    model = GPT(GPTConfig.preset(preset, vocab_size=template.tokenizer.vocab_size, n_layer=2,
                                 n_head=2, n_embd=32, block_size=64)).to(dtype=np.float64).eval()
    examples = [sft_example(template, r, i) for i, r in enumerate(RECORDS)]
    inputs, targets, segments, positions = pack_examples(examples, block_size=64)
    assert len(inputs) == 1                                     # all three share one block
    kw = {"positions": positions} if preset == "gpt2" else {}
    with no_grad():
        packed = model(inputs, attn_mask=segment_mask(segments, np.float64), **kw).numpy()[0]
        at = 0
        for x, y in examples:
            alone = model(x[None]).numpy()[0]
            np.testing.assert_allclose(packed[at:at + len(x)], alone, rtol=0, atol=1e-10)
            at += len(x)


def test_batcher_batches(template):
    batcher = SFTBatcher(template, RECORDS * 4, block_size=64)
    x, y, pos, mask = batcher.batch(3, np.random.default_rng(0))
    assert x.shape == y.shape == pos.shape == (3, 64) and mask.shape == (3, 1, 64, 64)
    assert batcher.n_examples == 12 and len(batcher) >= 2


def test_malformed_records_name_the_record_and_field(template):
    with pytest.raises(ValueError, match=r"SFT record 4: missing field 'response'"):
        SFTBatcher(template, RECORDS + [RECORDS[0], {"prompt": "hi"}], block_size=32)
    with pytest.raises(ValueError, match="SFT record 0: expected a dict"):
        sft_example(template, "hello")
