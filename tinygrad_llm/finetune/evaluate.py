"""Fixed windows of a token stream, drawn the same way for every model measured (examples/
quantize.py's GPTQ calibration reads them).

What the fine-tuning examples report (task accuracy, a behaviour's rate, preference rate,
perplexity) is measured by the evaluation harness, tinygrad_llm.eval and its chat tasks
(eval/chat.py), each figure with its bootstrap standard error.
"""
import numpy as np

__all__ = ["windows"]


def windows(ids, n, length, seed):
    """(n, length + 1) windows of the token array `ids` at offsets drawn with `seed`: the same
    windows for every model measured."""
    starts = np.random.default_rng(seed).integers(0, len(ids) - length - 1, n)
    return np.stack([ids[s:s + length + 1] for s in starts])
