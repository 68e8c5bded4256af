"""Evaluation harness: the requests of EleutherAI's lm-evaluation-harness (harness.py:
loglikelihood, loglikelihood_rolling, generate_until, multiple_choice), tasks as JSONL files or
built in (tasks.py), the same for a chat model through its template (chat.py), one run's
report with bootstrap standard errors (evaluate.py), and the command line
`python -m tinygrad_llm.eval --ckpt=... --tasks=a,b` (__main__.py). For in-context learning:
attention maps, prefix-matching scores and the ICL score (interp.py), and synthetic few-shot
episodes scored by greedy exact match (fewshot.py).

Reading order: harness.py, tasks.py, evaluate.py, chat.py, __main__.py, interp.py, fewshot.py.
"""
from .chat import CHAT_BUILTIN, chat_builtin, chat_context, chat_tasks, preference_task
from .evaluate import (bootstrap_stderr, by_task, evaluate, exact_match, figure, task_accuracy,
                       task_mean)
from .fewshot import FEWSHOT_TASKS, FewShotTasks, episode_batch, fewshot_accuracy
from .harness import (generate_until, loglikelihood, loglikelihood_rolling, multiple_choice,
                      rolling_windows, split_request)
from .interp import (attention_maps, copy_losses, icl_score, prefix_matching_scores,
                     repeated_tokens, token_losses)
from .tasks import BUILTIN, Task, get_task, load_jsonl, render

__all__ = ["loglikelihood", "loglikelihood_rolling", "generate_until", "multiple_choice",
           "rolling_windows", "split_request", "Task", "load_jsonl", "get_task", "render",
           "BUILTIN", "evaluate", "bootstrap_stderr", "exact_match", "figure", "by_task",
           "task_mean", "task_accuracy", "chat_context", "chat_tasks", "preference_task",
           "chat_builtin", "CHAT_BUILTIN", "attention_maps", "token_losses", "repeated_tokens",
           "prefix_matching_scores", "copy_losses", "icl_score", "FEWSHOT_TASKS",
           "FewShotTasks", "episode_batch", "fewshot_accuracy"]
