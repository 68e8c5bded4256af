"""Generated tasks: speakers parsed from the play's headings, each record well formed and
answerable, preference pairs with a wrong rejected answer, the checker, and the splits (no
held-out prompt among the training records)."""
import numpy as np

import pytest

from tinygrad_llm.finetune.tasks import (answer_is_correct, arithmetic, continue_line,
                                         play_words, preference_pairs, reversal, speeches,
                                         split_by_prompt, split_records, task_records,
                                         who_speaks)

PLAY = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?
We know't, we know't.
"""


def test_speeches_follow_the_headings():
    got = speeches(PLAY)
    assert got[0] == ("First Citizen", "Before we proceed any further, hear me speak.")
    assert got[1] == ("All", "Speak, speak.")
    assert got[-1] == ("First Citizen", "We know't, we know't.")


def test_who_speaks_and_continue_line(shakespeare_text):
    records = who_speaks(shakespeare_text, n=200)
    assert len(records) == 200
    said = set(speeches(shakespeare_text))
    for r in records:
        assert r["prompt"].startswith("Who speaks this line?\n")
        assert (r["response"], r["prompt"].split("\n", 1)[1]) in said
    cont = continue_line(shakespeare_text, n=50)
    for r in cont:
        assert r["prompt"].startswith("Continue the line: ") and r["response"]


def test_checkable_tasks_and_pairs():
    records = arithmetic(20, seed=1) + reversal(20, seed=2)
    for r in records:
        assert answer_is_correct(r, r["response"] + "  ")
    assert eval_sum(records[0])                         # the arithmetic is right
    pairs = preference_pairs(records, seed=3)
    for p, r in zip(pairs, records):
        assert p["chosen"] == r["response"] and p["rejected"] != p["chosen"]
        assert not answer_is_correct(r, p["rejected"])
    train, held = split_records(records, 0.25, seed=4)
    assert len(train) == 30 and len(held) == 10
    assert sorted(map(str, train + held)) == sorted(map(str, records))


def eval_sum(record):
    a, b = record["prompt"][len("What is "):-1].split("+")
    return int(a) + int(b) == int(record["response"])


def test_arithmetic_is_seeded():
    assert arithmetic(5, seed=7) == arithmetic(5, seed=7)
    assert np.any([a != b for a, b in zip(arithmetic(5, seed=7), arithmetic(5, seed=8))])


def test_split_by_prompt_never_trains_on_a_held_out_prompt():
    records = arithmetic(300, max_value=6, seed=0)         # 36 distinct sums: many repeats
    train, held = split_by_prompt(records, 10, seed=1)
    held_prompts = {r["prompt"] for r in held}
    assert len(held) == 10 == len(held_prompts)
    assert not any(r["prompt"] in held_prompts for r in train)
    assert len(train) + sum(r["prompt"] in held_prompts for r in records) == len(records)
    with pytest.raises(ValueError, match="held_out=40 distinct prompts asked, the records have 36"):
        split_by_prompt(records, 40)


def test_task_records_hold_out_unseen_prompts(shakespeare_text):
    train, held = task_records(shakespeare_text, 300, 20, seed=0)
    held_prompts = {r["prompt"] for rs in held.values() for r in rs}
    assert {k: len(v) for k, v in held.items()} == {"who_speaks": 20, "arithmetic": 20,
                                                    "reversal": 20}
    assert len(train) == 900 and not any(r["prompt"] in held_prompts for r in train)
    # reversal reverses the play's words: held-out words are ones training never reversed
    assert len(play_words(shakespeare_text)) > 1000
    trained = {r["prompt"] for r in train if r["task"] == "reversal"}
    assert len(trained) > 200
