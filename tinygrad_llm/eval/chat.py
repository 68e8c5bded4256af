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

The fine-tuning examples (SFT, DPO, chat_speedrun) report these through `evaluate`, each with its
bootstrap standard error.

Reading order: chat_context, chat_tasks, preference_task.
"""
from ..finetune.tasks import COURTESY
from .tasks import Task

__all__ = ["chat_context", "chat_tasks", "preference_task"]


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
