"""Evaluation tasks: a name, a kind and a list of documents, from a JSONL file or built in.

    kind "multiple_choice"  docs {"context", "choices": [str, ...], "gold": index}
    kind "generate"         docs {"context", "answer"}: exact match of the greedy answer
    kind "perplexity"       docs {"text"}: rolling log-likelihood

A JSONL file holds one document per line; its kind follows from the first document's keys, and
every line must have the same keys (a malformed line raises naming the file and the line).

Built in (`BUILTIN`), each rendered as next-token prediction in the "Context: ... Question: ...
Answer:" form (Brown et al., 2020, sec. 2; the finetune.tasks prompts, which the fine-tuning
examples train on through the chat template, are asked here of a bare language model):
    arithmetic, reversal     finetune.tasks' generated checkable tasks, answered by generation
    who_speaks               a line of the play's held-out 10 %; which of four speakers says it
    next_line                a held-out line; which of four lines follows it
    who_speaks_play,         the same two questions in the play's own layout ("NAME:" over the
      next_line_play         line; a line, then the next): a base model that has read only
                             plays has never seen "Question: ... Answer:", and the gap between
                             the two forms is how much of a score is the format
    shakespeare_ppl          perplexity of the held-out 10 % (nanoGPT's validation split)
`get_task(name)` builds one (the Shakespeare tasks read the text through data.shakespeare, or
from `text`); an unknown name raises listing the available ones.

Reading order: Task, load_jsonl, render, the builders, get_task.
"""
import dataclasses
import json
import os

import numpy as np

from ..data import shakespeare, split
from ..finetune.tasks import arithmetic, reversal, speeches

__all__ = ["Task", "load_jsonl", "render", "arithmetic_task", "reversal_task",
           "who_speaks_task", "next_line_task", "shakespeare_ppl_task", "get_task",
           "BUILTIN", "KINDS"]

KINDS = {"multiple_choice": ("context", "choices", "gold"), "generate": ("context", "answer"),
         "perplexity": ("text",)}


@dataclasses.dataclass
class Task:
    """name, kind (one of KINDS) and docs (dicts with that kind's keys), and how the harness
    asks them (the per-task settings of lm-evaluation-harness's task configs):
    target_delimiter: what joins a multiple-choice context to each choice (" " after "Answer:";
        "" after a chat template's assistant token, which the answer follows directly);
    stop, max_new_tokens: where a generated answer ends;
    process_results: (doc, generated text) -> {metric: float} for a generate task; None scores
        exact_match (the stripped answer equals the stripped doc["answer"])."""
    name: str
    kind: str
    docs: list
    target_delimiter: str = " "
    stop: tuple = ("\n",)
    max_new_tokens: int = 16
    process_results: object = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Task {self.name!r}: kind must be one of {sorted(KINDS)}, got "
                             f"{self.kind!r}")
        if self.process_results is not None and not callable(self.process_results):
            raise TypeError(f"Task {self.name!r}: process_results must be callable or None, "
                            f"got {type(self.process_results).__name__}")


def _kind_of(doc):
    for kind, keys in KINDS.items():
        if set(keys) <= set(doc):
            return kind
    return None


def _check_doc(doc, kind, where):
    """Raise ValueError naming `where` (file:line) unless doc is a valid `kind` document."""
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    missing = [k for k in KINDS[kind] if k not in doc]
    if missing:
        raise ValueError(f"{where}: a {kind} document needs keys {list(KINDS[kind])}, missing "
                         f"{missing} (got {sorted(doc)})")
    text_keys = [k for k in ("context", "answer", "text") if k in KINDS[kind]]
    for k in text_keys:
        if not isinstance(doc[k], str):
            raise ValueError(f"{where}: {k!r} must be a string, got {doc[k]!r}")
    if kind == "multiple_choice":
        choices, gold = doc["choices"], doc["gold"]
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c for c in choices)):
            raise ValueError(f"{where}: 'choices' must be a list of >= 2 non-empty strings, got "
                             f"{choices!r}")
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise ValueError(f"{where}: 'gold' must be an index in [0, {len(choices)}), got "
                             f"{gold!r}")


def load_jsonl(path, name=None):
    """A Task from a JSONL file (one document per line, blank lines skipped); name defaults to
    the file's name without its extension."""
    docs, kind = [], None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
            if kind is None:
                kind = _kind_of(doc) if isinstance(doc, dict) else None
                if kind is None:
                    raise ValueError(f"{where}: expected an object with keys "
                                     f"{' or '.join(str(list(k)) for k in KINDS.values())}, got "
                                     f"{doc!r:.120}")
            _check_doc(doc, kind, where)
            docs.append(doc)
    if not docs:
        raise ValueError(f"{path}: no documents (the file is empty)")
    name = name or os.path.splitext(os.path.basename(path))[0]
    return Task(name, kind, docs)


def render(question, context=None):
    """The "Context: ... Question: ... Answer:" form of a prompt (Context only when given)."""
    head = f"Context: {context}\n" if context else ""
    return f"{head}Question: {question}\nAnswer:"


# ---- built-in tasks ----------------------------------------------------------------------------
def arithmetic_task(n=200, seed=1234):
    """finetune.tasks.arithmetic questions ("What is 17+25?" -> "42"), answered by generation.
    The default seed differs from the fine-tuning examples' (0), so these are not their
    training prompts."""
    return Task("arithmetic", "generate",
                [{"context": render(r["prompt"]), "answer": r["response"]}
                 for r in arithmetic(n, seed=seed)])


def reversal_task(n=200, seed=1234):
    """finetune.tasks.reversal ("Reverse: night" -> "thgin"), answered by generation."""
    return Task("reversal", "generate",
                [{"context": render(r["prompt"]), "answer": r["response"]}
                 for r in reversal(n, seed=seed)])


def _held_out(text):
    return split(text, 0.1)[1]


def _choices(gold, pool, rng, n=4):
    """(choices, gold index): `gold` among n - 1 others drawn from pool, in random order."""
    others = [p for p in pool if p != gold]
    picked = [others[i] for i in rng.choice(len(others), n - 1, replace=False)]
    at = int(rng.integers(0, n))
    return picked[:at] + [gold] + picked[at:], at


def _cloze_task(name, question, pairs, pool, n, seed, play=None):
    """A four-way multiple-choice Task from n of the (line, answer) pairs, drawn in a seeded
    order: the answer among three others from pool. Asked as the question about the line in the
    "Context: ... Question: ... Answer:" form, or (play: (context, choice_format)) in the play's
    own layout: the context, then each choice formatted with the line, no delimiter."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in rng.permutation(len(pairs))[:n]:
        line, answer = pairs[i]
        choices, gold = _choices(answer, pool, rng)
        if play is None:
            docs.append({"context": render(question, line), "choices": choices, "gold": gold})
        else:
            context, layout = play
            docs.append({"context": context.format(line=line),
                         "choices": [layout.format(choice=c, line=line) for c in choices],
                         "gold": gold})
    return Task(name, "multiple_choice", docs, target_delimiter=" " if play is None else "")


def _speaker_lines(text, min_words):
    pairs = [(s, line) for s, line in speeches(_held_out(text)) if len(line.split()) >= min_words]
    speakers = sorted({s for s, _ in pairs})
    if len(speakers) < 4:
        raise ValueError(f"who_speaks_task: the held-out text has {len(speakers)} speakers, "
                         f"need at least 4")
    return [(line, speaker) for speaker, line in pairs], speakers


def who_speaks_task(text, n=200, seed=0, min_words=4, play=False):
    """Which of four speakers says a held-out line (the speakers with a line there).
    play=True: asked as the play sets a speech, a blank line then each "NAME:" heading over the
    line, so a choice scores log p(NAME, line) = log p(NAME) + log p(line | NAME), the joint whose
    argmax over names is the posterior's (who_speaks_play)."""
    pairs, speakers = _speaker_lines(text, min_words)
    return _cloze_task("who_speaks_play" if play else "who_speaks", "Who speaks this line?",
                       pairs, speakers, n, seed,
                       play=("\n\n", "{choice}:\n{line}\n") if play else None)


def next_line_task(text, n=200, seed=0, play=False):
    """Which of four held-out lines follows a held-out line of the same speech. play=True: the
    line and its newline as the context, each candidate line as the continuation, as the play
    runs (next_line_play)."""
    lines = [line.strip() for line in _held_out(text).splitlines()]
    follows = [(a, b) for a, b in zip(lines, lines[1:]) if a and b and not b.endswith(":")
               and not a.endswith(":")]
    return _cloze_task("next_line_play" if play else "next_line", "Which line comes next?",
                       follows, sorted({b for _, b in follows}), n, seed,
                       play=("{line}\n", "{choice}\n") if play else None)


def shakespeare_ppl_task(text):
    """Perplexity of the held-out 10 % of the text, one document."""
    return Task("shakespeare_ppl", "perplexity", [{"text": _held_out(text)}])


BUILTIN = {"arithmetic": lambda text: arithmetic_task(),
           "reversal": lambda text: reversal_task(),
           "who_speaks": who_speaks_task,
           "next_line": next_line_task,
           "who_speaks_play": lambda text: who_speaks_task(text, play=True),
           "next_line_play": lambda text: next_line_task(text, play=True),
           "shakespeare_ppl": shakespeare_ppl_task}
_NEEDS_TEXT = {"who_speaks", "next_line", "who_speaks_play", "next_line_play",
               "shakespeare_ppl"}


def get_task(name, text=None):
    """A built-in task by name, or a Task from a path ending in .jsonl. text: the Shakespeare
    text for the tasks made from it (default: data.shakespeare())."""
    if isinstance(name, Task):
        return name
    if not isinstance(name, str):
        raise TypeError(f"get_task: name must be a str, got {type(name).__name__}")
    if name.endswith(".jsonl"):
        return load_jsonl(name)
    if name not in BUILTIN:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(BUILTIN))} "
                         f"or a path to a .jsonl file")
    if name in _NEEDS_TEXT and text is None:
        text = shakespeare()
    return BUILTIN[name](text)
