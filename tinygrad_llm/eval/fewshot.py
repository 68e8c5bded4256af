"""Synthetic few-shot tasks: episodes of k demonstrations and a query, for measuring in-context
learning with no weight updates (the few-shot framing of Brown et al., 2020, on toy tasks in
the spirit of Garg et al., 2022 and Olsson et al., 2022).

    demo_1 SEP demo_2 SEP ... demo_k SEP query ARROW answer        demo: input ARROW output

Tasks (a fresh hidden rule per episode, so only the context tells the model which one):
- "recall":  key -> value pairs of a random mapping of n_keys keys; demos draw keys with
             replacement; the query is a key shown in a demo (0 shots: any key of the mapping).
- "pattern": a rule, one of copy / reverse / increment (each symbol + 1 mod n_symbols), applied
             to pattern_len distinct symbols: "a b c -> c b a".
- "modular": a PLUS b -> (a + b) mod p, with p drawn from `moduli` per episode.
Symbols are ids 0 .. n_symbols - 1; SEP, ARROW, PLUS and PAD follow them (fewshot_vocab_size).

Reading order: FewShotTasks (the layout and one episode), episode_batch (padded training or
evaluation batches, targets only on the outputs), fewshot_accuracy (greedy exact match of the
query's answer).
"""
import dataclasses

import numpy as np

from .. import backend
from ..tensor import no_grad

__all__ = ["FEWSHOT_TASKS", "FewShotTasks", "episode_batch", "fewshot_accuracy"]

FEWSHOT_TASKS = ("recall", "pattern", "modular")
PATTERN_RULES = ("copy", "reverse", "increment")


@dataclasses.dataclass
class FewShotTasks:
    """The token layout and the tasks' sizes. vocab_size = n_symbols + 4 (SEP, ARROW, PLUS, PAD)."""
    n_symbols: int = 32               # content tokens, ids 0 .. n_symbols - 1
    n_keys: int = 8                   # recall: pairs in each episode's mapping
    pattern_len: int = 3              # pattern: symbols in each input (and output)
    moduli: tuple = (5, 7, 11)        # modular: p is drawn from these per episode

    def __post_init__(self):
        self.moduli = tuple(int(p) for p in self.moduli)
        if self.n_symbols < 2 or self.n_keys < 1 or self.n_keys > self.n_symbols:
            raise ValueError(f"FewShotTasks: expected 1 <= n_keys <= n_symbols and n_symbols >= "
                             f"2, got n_keys={self.n_keys}, n_symbols={self.n_symbols}")
        if not 1 <= self.pattern_len <= self.n_symbols:
            raise ValueError(f"FewShotTasks: pattern_len must be in [1, n_symbols="
                             f"{self.n_symbols}], got {self.pattern_len}")
        if not self.moduli or min(self.moduli) < 2 or max(self.moduli) > self.n_symbols:
            raise ValueError(f"FewShotTasks: moduli must be in [2, n_symbols={self.n_symbols}], "
                             f"got {self.moduli}")
        self.sep, self.arrow, self.plus, self.pad = range(self.n_symbols, self.n_symbols + 4)

    @property
    def vocab_size(self):
        return self.n_symbols + 4

    def answer_len(self, task):
        return self.pattern_len if task == "pattern" else 1

    def episode_len(self, task, shots):
        """Tokens of an episode with `shots` demos (the answer included)."""
        pair = {"recall": 3, "pattern": 2 * self.pattern_len + 1, "modular": 5}[_task(task)]
        return (shots + 1) * pair + shots

    def episode(self, task, shots, rng):
        """One episode: (tokens list, answer_start). The answer is tokens[answer_start:]."""
        task, n = _task(task), self.n_symbols
        if task == "recall":
            keys = rng.permutation(n)[:self.n_keys]
            values = dict(zip(keys.tolist(), rng.integers(0, n, self.n_keys).tolist()))
            shown = rng.choice(keys, size=shots).tolist()
            query = shown[rng.integers(shots)] if shots else int(rng.choice(keys))
            pairs = [([k], [values[k]]) for k in shown + [query]]
        elif task == "pattern":
            rule = PATTERN_RULES[rng.integers(len(PATTERN_RULES))]
            pairs = []
            for _ in range(shots + 1):
                x = rng.permutation(n)[:self.pattern_len].tolist()
                y = {"copy": x, "reverse": x[::-1], "increment": [(s + 1) % n for s in x]}[rule]
                pairs.append((x, y))
        else:
            p = self.moduli[rng.integers(len(self.moduli))]
            pairs = []
            for _ in range(shots + 1):
                a, b = rng.integers(0, p, 2).tolist()
                pairs.append(([a, self.plus, b], [(a + b) % p]))
        tokens = []
        for i, (x, y) in enumerate(pairs):
            if i:
                tokens.append(self.sep)
            tokens += x + [self.arrow]
            start = len(tokens)
            tokens += y
        return tokens, start


def _task(task):
    if task not in FEWSHOT_TASKS:
        raise ValueError(f"task: expected one of {FEWSHOT_TASKS}, got {task!r}")
    return task


def episode_batch(tasks, layout, batch, shots, rng, block_size, every_output=True):
    """A batch of episodes, right-padded with PAD: (ids (batch, block_size + 1), targets mask
    (batch, block_size + 1) bool, answer starts (batch,)). tasks: one task name, or a sequence
    drawn from per episode. The mask marks the tokens the loss should predict: every demo output
    and the answer (every_output=True, for training), or the answer alone. Raises a ValueError
    naming `shots` when an episode does not fit in block_size + 1 tokens."""
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    longest = max(layout.episode_len(t, shots) for t in names)
    if longest > block_size + 1:
        raise ValueError(f"shots: {shots} demonstrations need {longest} tokens per episode, more "
                         f"than block_size + 1 = {block_size + 1}")
    ids = np.full((batch, block_size + 1), layout.pad, np.int64)
    mask = np.zeros((batch, block_size + 1), bool)
    starts = np.zeros(batch, np.int64)
    for b in range(batch):
        task = names[rng.integers(len(names))]
        tokens, start = layout.episode(task, shots, rng)
        ids[b, :len(tokens)] = tokens
        starts[b] = start
        width = layout.answer_len(task)
        if every_output:             # each demo output follows an ARROW
            arrows = [i + 1 for i, tok in enumerate(tokens) if tok == layout.arrow]
            for a in arrows:
                mask[b, a:a + width] = True
        else:
            mask[b, start:start + width] = True
    return ids, mask, starts


def fewshot_accuracy(model, task, layout, shots, episodes, rng, batch=64):
    """Exact-match accuracy of the query's answer under greedy decoding, with no weight updates:
    `episodes` fresh episodes of `task` with `shots` demos each. The answer counts when the
    argmax at each of its positions is the right token given the right tokens before it, which
    is exactly when greedy decoding writes the whole answer. Returns a float in [0, 1].
    Raises a ValueError naming `shots` when an episode exceeds the model's block_size."""
    t = layout.episode_len(task, shots)
    if t > model.config.block_size + 1:
        raise ValueError(f"shots: {shots} demonstrations of {task!r} need {t} tokens, more than "
                         f"the model's block_size + 1 = {model.config.block_size + 1}")
    width = layout.answer_len(task)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for first in range(0, episodes, batch):
            n = min(batch, episodes - first)
            ids, _, starts = episode_batch(task, layout, n, shots, rng, t - 1,
                                           every_output=False)
            with no_grad():
                logits = model(backend.to_device(ids[:, :-1], model.device)).data
            guess = backend.to_numpy(logits.argmax(axis=-1))               # (n, T - 1)
            start = int(starts[0])                        # one task and shots: one layout
            right = guess[:, start - 1:start - 1 + width] == ids[:, start:start + width]
            correct += int(right.all(axis=1).sum())
    finally:
        model.train(was_training)
    return correct / episodes
