"""Evaluation harness: the requests of EleutherAI's lm-evaluation-harness (harness.py:
loglikelihood, loglikelihood_rolling, generate_until, multiple_choice), tasks as JSONL files or
built in (tasks.py), the same for a chat model through its template (chat.py), one run's
report with bootstrap standard errors (evaluate.py), and the command line
`python -m tinygrad_llm.eval --ckpt=... --tasks=a,b` (__main__.py).

Reading order: harness.py, tasks.py, evaluate.py, chat.py, __main__.py.
"""
from .chat import CHAT_BUILTIN, chat_builtin, chat_context, chat_tasks, preference_task
from .evaluate import (bootstrap_stderr, by_task, evaluate, exact_match, figure, task_accuracy,
                       task_mean)
from .harness import (generate_until, loglikelihood, loglikelihood_rolling, multiple_choice,
                      rolling_windows, split_request)
from .tasks import BUILTIN, Task, get_task, load_jsonl, render

__all__ = ["loglikelihood", "loglikelihood_rolling", "generate_until", "multiple_choice",
           "rolling_windows", "split_request", "Task", "load_jsonl", "get_task", "render",
           "BUILTIN", "evaluate", "bootstrap_stderr", "exact_match", "figure", "by_task",
           "task_mean", "task_accuracy", "chat_context", "chat_tasks", "preference_task",
           "chat_builtin", "CHAT_BUILTIN"]
