"""Tasks for a chat model: the same harness requests, with the prompt rendered through the chat
template instead of the "Context: ... Question: ... Answer:" form.

    chat_tasks(template, held)        one generate Task per finetune task: the user's prompt,
                                      the assistant's greedy answer up to the end-of-turn token;
                                      metrics exact_match (a COURTESY ending set aside: it is
                                      the style DPO teaches, not part of the answer) and courtesy
                                      (the answer ends with it)
    preference_task(template, pairs)  the chosen and the rejected response of each pair as a
                                      two-way multiple choice (gold: chosen), so acc is the
                                      preference rate: how often log p(chosen) > log p(rejected)
    chat_builtin(names, tokenizer)    the built-in chat tasks (CHAT_BUILTIN) of the command
                                      line: chat_who_speaks, chat_arithmetic, chat_reversal and
                                      chat_preference, asked of the prompts the fine-tuning
                                      examples hold out (finetune.task_records' split), so a
                                      chat model is never scored on a prompt it trained on

The fine-tuning examples (SFT, DPO, RLHF, the reward model, chat_speedrun) report these through
`evaluate`, each with its bootstrap standard error.

Reading order: chat_context, chat_tasks, preference_task, chat_builtin.
"""
from ..data import shakespeare
from ..finetune.tasks import COURTESY, TASKS, preference_pairs, task_records
from ..tokenizers import ChatTemplate
from .tasks import Task

__all__ = ["chat_context", "chat_tasks", "preference_task", "chat_builtin", "CHAT_BUILTIN",
           "HELD_OUT_SPLIT"]

CHAT_BUILTIN = (*(f"chat_{t}" for t in TASKS), "chat_preference")
# the fine-tuning examples' default split: per_task training records and held_out held-out
# prompts of each task, drawn with seed (finetune.task_records)
HELD_OUT_SPLIT = {"per_task": 2000, "held_out": 60, "seed": 0}


def chat_context(template, prompt):
    """The text of one user turn and the assistant's opening token (what generation continues)."""
    return template.render_text([{"role": "user", "content": prompt}],
                                add_generation_prompt=True)


def _chat_results(doc, answer):
    answer = answer.strip()
    return {"exact_match": float(answer.removesuffix(COURTESY).strip() == doc["answer"].strip()),
            "courtesy": float(answer.endswith(COURTESY))}


def chat_tasks(template, held, max_new_tokens=16):
    """[Task] from held = {task name: [{"prompt", "response"}]} (finetune.task_records' held-out
    split): each prompt asked in the chat template, answered greedily until the end-of-turn
    token."""
    if not isinstance(held, dict) or not held:
        raise ValueError(f"chat_tasks: held must be a non-empty dict {{task: records}}, got "
                         f"{held!r:.120}")
    return [Task(name, "generate",
                 [{"context": chat_context(template, r["prompt"]), "answer": r["response"]}
                  for r in records],
                 stop=(template.end_token,), max_new_tokens=max_new_tokens,
                 process_results=_chat_results)
            for name, records in held.items()]


def preference_task(template, pairs, name="preference"):
    """A multiple-choice Task from [{"prompt", "chosen", "rejected"}] (finetune.preference_pairs):
    each response scored with its end-of-turn token, directly after the assistant token."""
    if not pairs:
        raise ValueError("preference_task: pairs is empty")
    end = template.end_token
    return Task(name, "multiple_choice",
                [{"context": chat_context(template, p["prompt"]),
                  "choices": [p["chosen"] + end, p["rejected"] + end], "gold": 0}
                 for p in pairs], target_delimiter="")


def chat_builtin(names, tokenizer, text=None, per_task=None, held_out=None, seed=None):
    """[Task] for built-in chat task names (CHAT_BUILTIN), in the order given.

    chat_<task>: that finetune task's held-out prompts through chat_tasks (exact_match,
    courtesy); chat_preference: preference_pairs of all the held-out records (drawn with
    seed + 1, as dpo.py --behaviour=correct draws its held-out pairs) through preference_task.
    The held-out records are task_records(text, per_task, held_out, seed)'s, which must be the
    split the model was fine-tuned with (finetune_sft.py records it in the checkpoint); None
    takes HELD_OUT_SPLIT's value. text: the play (default data.shakespeare()). Raises
    ValueError naming the task when the tokenizer lacks the chat template's special tokens."""
    unknown = [n for n in names if n not in CHAT_BUILTIN]
    if unknown:
        raise ValueError(f"chat_builtin: unknown chat tasks {unknown}; available: "
                         f"{', '.join(CHAT_BUILTIN)}")
    if not names:
        return []
    try:
        template = ChatTemplate(tokenizer)
    except ValueError as e:            # a base model's tokenizer without the chat tokens
        raise ValueError(f"chat tasks ({', '.join(names)}) are asked through the chat template "
                         f"and need a chat model's tokenizer: {e}") from None
    split = {k: HELD_OUT_SPLIT[k] if v is None else v
             for k, v in (("per_task", per_task), ("held_out", held_out), ("seed", seed))}
    _, held = task_records(shakespeare() if text is None else text, **split)
    tasks = {t.name: t for t in chat_tasks(template, {f"chat_{k}": v for k, v in held.items()})}
    if "chat_preference" in names:
        pairs = preference_pairs([r for rs in held.values() for r in rs], seed=split["seed"] + 1)
        tasks["chat_preference"] = preference_task(template, pairs, name="chat_preference")
    return [tasks[n] for n in names]
