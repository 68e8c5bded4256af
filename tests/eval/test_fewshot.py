"""tinygrad_llm.eval.fewshot: each task's episodes follow its rule and layout, training batches
mark every demo output, and fewshot_accuracy scores the answer's positions exactly (an oracle
that reads the context scores 1 with shots and chance without; an oracle shifted by one
position scores 0); bad inputs are named."""
import numpy as np
import pytest

from tinygrad_llm.eval.fewshot import (FEWSHOT_TASKS, FewShotTasks, episode_batch,
                                       fewshot_accuracy)
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.tensor import Tensor

L = FewShotTasks(n_symbols=16, n_keys=4, pattern_len=3, moduli=(5, 7))


def _split(tokens):
    """(input, output) pairs of an episode."""
    pairs, x = [], []
    for demo in np.split(np.asarray(tokens), np.where(np.asarray(tokens) == L.sep)[0]):
        demo = [t for t in demo if t != L.sep]
        a = demo.index(L.arrow)
        pairs.append((demo[:a], demo[a + 1:]))
    return pairs


@pytest.mark.parametrize("task", FEWSHOT_TASKS)
@pytest.mark.parametrize("shots", [0, 1, 4])
def test_episodes_follow_their_rule(task, shots):
    rng = np.random.default_rng(0)
    for _ in range(20):
        tokens, start = L.episode(task, shots, rng)
        assert len(tokens) == L.episode_len(task, shots)
        assert len(tokens) - start == L.answer_len(task) and tokens[start - 1] == L.arrow
        pairs = _split(tokens)
        assert len(pairs) == shots + 1
        if task == "recall":
            mapping = {}
            for x, y in pairs:                           # one value per key in an episode
                assert mapping.setdefault(x[0], y[0]) == y[0]
            if shots:
                assert pairs[-1][0][0] in [x[0] for x, _ in pairs[:-1]]
        elif task == "pattern":
            rules = [lambda x: x, lambda x: x[::-1], lambda x: [(s + 1) % 16 for s in x]]
            assert any(all(list(y) == list(r(list(x))) for x, y in pairs) for r in rules)
        else:
            ps = [p for p in L.moduli
                  if all(x[1] == L.plus and y[0] == (x[0] + x[2]) % p and max(x[0], x[2]) < p
                         for x, y in pairs)]
            assert ps


def test_training_batches_mark_every_output():
    rng = np.random.default_rng(1)
    ids, mask, starts = episode_batch(FEWSHOT_TASKS, L, 6, 3, rng, block_size=40)
    assert ids.shape == mask.shape == (6, 41)
    for row, m, start in zip(ids, mask, starts):
        after_arrow = np.zeros_like(m)
        for a in np.where(row == L.arrow)[0]:
            width = 3 if row[a + 2] not in (L.sep, L.pad) else 1
            after_arrow[a + 1:a + 1 + width] = True
        np.testing.assert_array_equal(m, after_arrow)
        assert m[start]
    _, answer_only, _ = episode_batch("recall", L, 2, 3, rng, 40, every_output=False)
    assert answer_only.sum() == 2


def test_shots_that_do_not_fit_are_named():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="shots: 16 demonstrations need 135 tokens"):
        episode_batch("pattern", FewShotTasks(), 1, 16, rng, block_size=100)
    model = GPT(GPTConfig.preset("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=20,
                                 vocab_size=L.vocab_size))
    with pytest.raises(ValueError, match="shots: 8 demonstrations of 'modular' need 53 tokens"):
        fewshot_accuracy(model, "modular", L, 8, 4, rng)
    with pytest.raises(ValueError, match="task: expected one of"):
        L.episode_len("sorting", 2)
    with pytest.raises(ValueError, match="moduli"):
        FewShotTasks(n_symbols=8, moduli=(11,))


class _RecallOracle:
    """Reads the context like a perfect induction head: after the last ARROW, the value shown
    for the query key (the symbol 0 when none was shown). shift moves every guess one position
    later, to check that the scorer reads the answer's own position."""
    training = False

    def __init__(self, shift=0):
        self.config = GPTConfig.preset("gpt2", n_layer=1, n_head=1, n_embd=8, block_size=64,
                                       vocab_size=L.vocab_size)
        self.device, self.shift = "cpu", shift

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, ids):
        logits = np.zeros(ids.shape + (L.vocab_size,))
        logits[..., L.pad] = 0.5                  # elsewhere the guess is PAD: never right
        for b, row in enumerate(ids):
            last = np.where(row == L.arrow)[0][-1]
            key = row[last - 1]
            shown = [row[a + 1] for a in np.where(row[:last] == L.arrow)[0] if row[a - 1] == key]
            logits[b, min(last + self.shift, ids.shape[1] - 1), shown[0] if shown else 0] = 1
        return Tensor(logits)


def test_accuracy_scores_the_answer_position():
    rng = np.random.default_rng(0)
    assert fewshot_accuracy(_RecallOracle(), "recall", L, 4, 50, rng, batch=16) == 1.0
    assert fewshot_accuracy(_RecallOracle(), "recall", L, 0, 200, rng) < 0.2   # chance 1/16
    assert fewshot_accuracy(_RecallOracle(shift=-1), "recall", L, 4, 50, rng) == 0.0


def test_untrained_model_runs_every_task():
    model = GPT(GPTConfig.preset("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=64,
                                 vocab_size=L.vocab_size))
    rng = np.random.default_rng(0)
    for task in FEWSHOT_TASKS:
        assert 0.0 <= fewshot_accuracy(model, task, L, 2, 10, rng) <= 1.0
