"""What the fine-tuning examples measure, in one place so that each measures the same way: greedy
answers to task prompts and their exact-match accuracy, the rate of a taught behaviour, how often
a model prefers the chosen side of encoded pairs, and perplexity on fixed windows of a token
stream.

Reading order: answers -> task_accuracy -> judge (both from one set of answers), then
preference_rate, then windows -> perplexity.
"""
import numpy as np

from ..generate import generate
from ..tensor import no_grad
from .dpo import sequence_logprobs
from .tasks import COURTESY, answer_is_correct

__all__ = ["answers", "task_accuracy", "judge", "preference_rate", "windows", "perplexity"]


def answers(model, template, records, max_new_tokens=12):
    """The model's greedy answers (text, without the end token) to the records' prompts."""
    prompts = [template.render([{"role": "user", "content": r["prompt"]}],
                               add_generation_prompt=True)[0] for r in records]
    outs = generate(model, prompts, max_new_tokens, temperature=0, stop_ids=[template.end_id],
                    context_shift=True)
    return [template.tokenizer.decode([int(t) for t in o[len(p):] if int(t) != template.end_id])
            for p, o in zip(prompts, outs)]


def task_accuracy(model, template, held, max_new_tokens=12):
    """{task: exact-match accuracy of greedy answers} over held = {task: records}."""
    out = {}
    for name, records in held.items():
        got = answers(model, template, records, max_new_tokens)
        out[name] = round(sum(answer_is_correct(r, a) for r, a in zip(records, got))
                          / len(records), 3)
    return out


def judge(model, template, held, behaviour="courtesy"):
    """One greedy answer to every held-out prompt -> (behaviour rate, {task: accuracy}).

    accuracy: each task's exact-match rate, the COURTESY suffix set aside (it is a style being
    taught, not part of the answer); behaviour rate: how often the answers end with it, or
    (behaviour "correct") the mean of the tasks' accuracies."""
    records = [r for rs in held.values() for r in rs]
    got = [a.strip() for a in answers(model, template, records, max_new_tokens=16)]
    right = np.array([answer_is_correct(r, a.removesuffix(COURTESY))
                      for r, a in zip(records, got)], dtype=float)
    ends = np.cumsum([len(rs) for rs in held.values()])
    per_task = [part.mean() for part in np.split(right, ends[:-1])]
    rate = np.mean(per_task) if behaviour == "correct" else np.mean(
        [a.endswith(COURTESY) for a in got])
    return float(rate), {name: round(float(a), 3) for name, a in zip(held, per_task)}


def preference_rate(model, encoded):
    """How often log pi(chosen) > log pi(rejected) over pairs from dpo.encode_pairs."""
    with no_grad():
        chosen = sequence_logprobs(model, *encoded["chosen"]).numpy()
        rejected = sequence_logprobs(model, *encoded["rejected"]).numpy()
    return float((chosen > rejected).mean())


def windows(ids, n, length, seed):
    """(n, length + 1) windows of the token array `ids` at offsets drawn with `seed`: the same
    windows for every model measured."""
    starts = np.random.default_rng(seed).integers(0, len(ids) - length - 1, n)
    return np.stack([ids[s:s + length + 1] for s in starts])


def perplexity(model, data, batch_size=16):
    """exp of the mean next-token cross-entropy over the windows `data` (from `windows`)."""
    total = 0.0
    with no_grad():
        for i in range(0, len(data), batch_size):
            x, y = data[i:i + batch_size, :-1], data[i:i + batch_size, 1:]
            _, loss = model(x, targets=y)
            total += float(loss.numpy()) * len(x)
    return float(np.exp(total / len(data)))
