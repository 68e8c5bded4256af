"""Instruction data made from tiny Shakespeare and from tasks whose answers can be checked, so
every fine-tuning method runs offline and its gain can be measured.

    who_speaks(text)     "Who speaks this line?\\n<line>"  ->  the speaker's name (the play's
                         "NAME:" headings give it)
    continue_line(text)  "Continue the line: <first half>" ->  the second half
    arithmetic(n)        "What is 17+25?"                  ->  "42"
    reversal(n)          "Reverse: night"                  ->  "thgin"

Records are {"prompt", "response"} dicts (sft.py renders them through the chat template).
`task_records` makes the fine-tuning examples' data: TASKS, each split into training records and
held-out prompts the same way in every example, so no example trains on another's held-out
prompt, and no training record repeats a held-out prompt (split_by_prompt: small sums recur, and
reversal's held-out words are words training never reversed); `alignment_setup` adds the SFT
model they start from. `preference_pairs(records)` makes DPO / reward-model pairs: chosen =
the right response, rejected = a plausible wrong one; `answer_is_correct(record, response)`
checks an answer, for accuracy and for programmatic rewards. COURTESY is the style the DPO
example teaches (an answer ending ", my lord").
"""
import re

import numpy as np

from ..data import shakespeare
from ..tokenizers import ChatTemplate
from ..train import ensure_checkpoint, load_model

__all__ = ["speeches", "who_speaks", "continue_line", "arithmetic", "reversal",
           "preference_pairs", "answer_is_correct", "split_records", "split_by_prompt",
           "play_words", "task_records",
           "alignment_setup", "TASKS", "COURTESY"]

TASKS = ("who_speaks", "arithmetic", "reversal")
COURTESY = ", my lord"

_HEADING = re.compile(r"^([A-Z][A-Za-z' ]{1,30}):$")


def speeches(text):
    """[(speaker, line)] for every line of verse under a "NAME:" heading."""
    out, speaker = [], None
    for raw in text.splitlines():
        line = raw.strip()
        heading = _HEADING.match(line)
        if heading:
            speaker = heading.group(1).strip()
        elif line and speaker is not None:
            out.append((speaker, line))
        elif not line:
            speaker = None
    return out


def who_speaks(text, n=None, min_count=50, min_words=4, seed=0):
    """Records asking who speaks a line, for speakers with at least min_count lines (so the
    answer is learnable). n: how many (default all), sampled with `seed`."""
    pairs = [(s, line) for s, line in speeches(text) if len(line.split()) >= min_words]
    names, counts = np.unique([s for s, _ in pairs], return_counts=True)
    common = set(names[counts >= min_count])
    pairs = [(s, line) for s, line in pairs if s in common]
    order = np.random.default_rng(seed).permutation(len(pairs))[:n]
    return [{"prompt": f"Who speaks this line?\n{pairs[i][1]}", "response": pairs[i][0],
             "task": "who_speaks"} for i in order]


def continue_line(text, n=None, min_words=6, seed=0):
    """Records giving the first half of a line (by words) and asking for the rest."""
    lines = [line for _, line in speeches(text) if len(line.split()) >= min_words]
    order = np.random.default_rng(seed).permutation(len(lines))[:n]
    out = []
    for i in order:
        words = lines[i].split()
        cut = len(words) // 2
        out.append({"prompt": f"Continue the line: {' '.join(words[:cut])}",
                    "response": " ".join(words[cut:]), "task": "continue_line"})
    return out


def arithmetic(n, max_value=50, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, max_value, n), rng.integers(0, max_value, n)
    return [{"prompt": f"What is {x}+{y}?", "response": str(x + y), "task": "arithmetic"}
            for x, y in zip(a.tolist(), b.tolist())]


_REVERSAL_WORDS = ["night", "love", "sword", "crown", "death", "heart", "king", "queen", "blood",
                   "grace", "honour", "fair", "sweet", "noble", "lord", "night"]


def reversal(n, words=None, seed=0):
    words = words or _REVERSAL_WORDS
    rng = np.random.default_rng(seed)
    picked = [words[i] for i in rng.integers(0, len(words), n)]
    return [{"prompt": f"Reverse: {w}", "response": w[::-1], "task": "reversal"} for w in picked]


def answer_is_correct(record, response):
    """Whether `response` answers the record's task correctly (exact match after stripping)."""
    return response.strip() == record["response"].strip()


def _wrong_answer(record, rng, pool):
    if record["task"] == "arithmetic":
        return str(int(record["response"]) + int(rng.choice([-3, -2, -1, 1, 2, 3])))
    if record["task"] == "reversal":
        return record["prompt"].split(": ", 1)[1]               # not reversed
    others = [r for r in pool if r != record["response"]]
    if not others:
        raise ValueError(f"preference_pairs: every {record['task']} record answers "
                         f"{record['response']!r}; a wrong answer needs a second response")
    return others[int(rng.integers(0, len(others)))]


def preference_pairs(records, seed=0):
    """[{"prompt", "chosen", "rejected"}]: the right response against a plausible wrong one (a
    near-miss sum, the unreversed word, another speaker or line)."""
    rng = np.random.default_rng(seed)
    pool = {}
    for r in records:
        pool.setdefault(r["task"], set()).add(r["response"])
    pools = {k: sorted(v) for k, v in pool.items()}
    return [{"prompt": r["prompt"], "chosen": r["response"],
             "rejected": _wrong_answer(r, rng, pools[r["task"]]), "task": r["task"]}
            for r in records]


def split_records(records, held_out=0.1, seed=0):
    """(train, held-out) with the held-out fraction chosen at random."""
    order = np.random.default_rng(seed).permutation(len(records))
    cut = int(round(len(records) * (1 - held_out)))
    return [records[i] for i in order[:cut]], [records[i] for i in order[cut:]]


def split_by_prompt(records, held_out, seed=0):
    """(train, held-out): held_out records of distinct prompts drawn at random, and every other
    record whose prompt is not among theirs, so that no held-out prompt is ever trained on (a
    task with few distinct prompts, small sums or a short word list, repeats them)."""
    order = np.random.default_rng(seed).permutation(len(records))
    held, prompts = [], set()
    for i in order:
        if len(held) == held_out:
            break
        if records[i]["prompt"] not in prompts:
            prompts.add(records[i]["prompt"])
            held.append(records[i])
    if len(held) < held_out:
        raise ValueError(f"split_by_prompt: held_out={held_out} distinct prompts asked, the "
                         f"records have {len(held)}")
    return [records[i] for i in order if records[i]["prompt"] not in prompts], held


def play_words(text, min_len=4, max_len=7):
    """The lowercase words of min_len..max_len letters in `text`, sorted: reversal's vocabulary
    in task_records (thousands in the play, so held-out words are ones training never reversed)."""
    return sorted({w for w in re.findall(r"\b[a-z]+\b", text) if min_len <= len(w) <= max_len})


def task_records(text, per_task, held_out, seed=0):
    """(training records, {task: held-out records}) of TASKS: held_out records of distinct
    prompts per task set aside at random, and up to per_task training records of each whose
    prompts are none of those (split_by_prompt). Reversal reverses the play's words
    (play_words) with the default list's; who_speaks asks lines of the play `text`."""
    n = 2 * (per_task + held_out)      # spare draws: records repeating a held-out prompt go
    words = sorted(set(play_words(text)) | set(_REVERSAL_WORDS))
    tasks = {"who_speaks": who_speaks(text, n=n, seed=seed), "arithmetic": arithmetic(n, seed=seed),
             "reversal": reversal(n, words=words, seed=seed)}
    train, held = [], {}
    for name, records in tasks.items():
        t, h = split_by_prompt(records, held_out, seed=seed)
        train += t[:per_task]
        held[name] = h
    return train, held


def alignment_setup(sft_path, per_task, held_out, seed=0, make=None):
    """What DPO, RLHF and a reward model start from: (the SFT checkpoint's model in eval mode,
    its chat template, its record, training records, {task: held-out records}), the records
    task_records(tiny Shakespeare, ...) as the SFT example split them. make: the command that
    writes the checkpoint when it is missing (train.ensure_checkpoint)."""
    if make is not None:
        ensure_checkpoint(sft_path, make)
    model, tokenizer, record = load_model(sft_path)
    train, held = task_records(shakespeare(), per_task, held_out, seed)
    return model, ChatTemplate(tokenizer), record, train, held
