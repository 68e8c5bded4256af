"""Supervised fine-tuning data: prompt/response records through the chat template, with the loss
only on what the assistant says.

A record is {"prompt": ..., "response": ...} (optionally "system") or {"messages": [{"role",
"content"}, ...]}. The template (tokenizers/chat.py) renders it as role tokens, content and end
tokens, and marks the assistant's content and its end token as the ones to learn. A language
model predicts token t + 1 from tokens <= t, so the training pair is

    inputs  = ids[:-1]
    targets = ids[1:] where learn[1:] is True, else -100 (cross_entropy's ignore_index)

Short examples waste most of a block as padding, so `pack_examples` fills each block with whole
examples one after another. Packing must not change what an example learns from: each example
attends only to itself (a block-diagonal causal mask from the segment ids, passed to the model
as `attn_mask`), restarts its positions at 0 (learned or sinusoidal tables read `positions`;
RoPE and ALiBi are relative, and the mask already hides the other examples), and nothing
predicts across a boundary (the first token of an example is never a target of the previous
one). Padding at the end of a block is its own segment with no targets.
"""
import numpy as np

__all__ = ["sft_example", "pack_examples", "segment_mask", "SFTBatcher"]

IGNORE = -100


def _messages(record, index):
    if not isinstance(record, dict):
        raise ValueError(f"SFT record {index}: expected a dict, got {type(record).__name__}")
    if "messages" in record:
        return record["messages"]
    for field in ("prompt", "response"):
        if field not in record:
            raise ValueError(f"SFT record {index}: missing field {field!r} (need 'prompt' and "
                             f"'response', or 'messages'); got fields {sorted(record)}")
    messages = [{"role": "system", "content": record["system"]}] if "system" in record else []
    return messages + [{"role": "user", "content": record["prompt"]},
                       {"role": "assistant", "content": record["response"]}]


def sft_example(template, record, index=0):
    """One record -> (inputs (N-1,), targets (N-1,)) int64, targets -100 except on the
    assistant's tokens."""
    ids, learn = template.render(_messages(record, index))
    targets = np.where(learn[1:], ids[1:], IGNORE)
    return ids[:-1].astype(np.int64), targets.astype(np.int64)


def pack_examples(examples, block_size, pad_id=0):
    """Pack (inputs, targets) pairs into blocks of block_size, whole examples only (first fit in
    order; an example longer than a block is cut to its first block_size tokens).

    Returns inputs, targets, segments, positions: four (n_blocks, block_size) int64 arrays;
    segments number the examples within a block from 0 (padding gets its own last number),
    positions restart at 0 for each example."""
    blocks, current = [], []
    for x, y in examples:
        x, y = x[:block_size], y[:block_size]
        if current and sum(len(c[0]) for c in current) + len(x) > block_size:
            blocks.append(current)
            current = []
        current.append((x, y))
    if current:
        blocks.append(current)
    shape = (len(blocks), block_size)
    inputs, targets = np.full(shape, pad_id, np.int64), np.full(shape, IGNORE, np.int64)
    segments, positions = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for b, block in enumerate(blocks):
        at = 0
        for s, (x, y) in enumerate(block):
            n = len(x)
            inputs[b, at:at + n], targets[b, at:at + n] = x, y
            segments[b, at:at + n], positions[b, at:at + n] = s, np.arange(n)
            at += n
        segments[b, at:] = len(block)
        positions[b, at:] = np.arange(block_size - at)
    return inputs, targets, segments, positions


def segment_mask(segments, dtype=np.float32):
    """(B, T) segment ids -> additive (B, 1, T, T) mask: 0 where query and key are in the same
    segment, -inf elsewhere (the model adds its causal mask on top)."""
    same = segments[:, None, :, None] == segments[:, None, None, :]
    return np.where(same, 0.0, -np.inf).astype(dtype)


class SFTBatcher:
    """Random batches of packed SFT blocks: (inputs, targets, positions, attn_mask)."""

    def __init__(self, template, records, block_size, pad_id=0):
        examples = [sft_example(template, r, i) for i, r in enumerate(records)]
        self.inputs, self.targets, self.segments, self.positions = pack_examples(
            examples, block_size, pad_id)
        self.n_examples = len(examples)

    def __len__(self):
        return len(self.inputs)

    def batch(self, batch_size, rng):
        rows = rng.integers(0, len(self.inputs), batch_size)
        return (self.inputs[rows], self.targets[rows], self.positions[rows],
                segment_mask(self.segments[rows]))

    def forward_kwargs(self, model, rows_batch):
        """Keyword arguments for model(...) from a batch: positions only where the model has an
        absolute position table."""
        inputs, targets, positions, mask = rows_batch
        kw = {"targets": targets, "attn_mask": mask}
        if getattr(model, "pos_emb", None) is not None:
            kw["positions"] = positions
        return inputs, kw
