"""One evaluation run: each task's documents through the harness, each metric with its bootstrap
standard error over documents, gathered into one report dict (written as JSON by the command
line, __main__.py).

    report = {"tasks": {name: {"kind", "n_docs", "metrics": {metric: {"value", "stderr"}}}},
              "limit", "seed", "bootstrap"}

Metrics by kind: multiple_choice -> acc, acc_norm, acc_centred; generate -> exact_match (the
greedy answer, stripped, equals the answer), or what the task's process_results gives;
perplexity -> perplexity, bits_per_byte, nll_per_token, resampled over the rolling windows (a
single long text has one document, and its windows are the units the loss is summed over).

The standard error is the bootstrap's (Efron, 1979): the metric recomputed on `bootstrap` samples
of the documents drawn with replacement, and the standard deviation of those values. For a mean
it matches the usual sqrt(p (1 - p) / n); for a ratio such as perplexity it needs no formula.

Reading order: bootstrap_stderr, the per-kind scorers, evaluate; then what the examples read
out of a report: figure, by_task, task_mean, and task_accuracy (a chat model's, in one call).
"""
import math

import numpy as np

from .harness import generate_until, loglikelihood_rolling, multiple_choice
from .chat import CHAT_BUILTIN, chat_builtin, chat_tasks
from .tasks import get_task

__all__ = ["evaluate", "bootstrap_stderr", "exact_match", "figure", "by_task", "task_mean",
           "task_accuracy"]


def bootstrap_stderr(columns, statistic=np.mean, n=1000, seed=0):
    """Standard deviation of statistic(*resampled columns) over n bootstrap samples of the rows.
    columns: an array (N,) or a tuple of arrays (N,) resampled together (a ratio's numerator and
    denominator). Returns nan with fewer than 2 rows or n < 2 (no spread to measure), and
    exactly 0 when all rows are equal (summation order would otherwise leave ~1e-16)."""
    columns = tuple(np.asarray(c, dtype=np.float64)
                    for c in (columns if isinstance(columns, tuple) else (columns,)))
    rows = len(columns[0])
    if rows < 2 or n < 2:
        return float("nan")
    if all((c == c[0]).all() for c in columns):     # identical rows: every resample is the data
        return 0.0
    picks = np.random.default_rng(seed).integers(0, rows, (n, rows))          # (n, N)
    values = np.array([statistic(*(c[p] for c in columns)) for p in picks])
    return float(values.std(ddof=1))


def _metric(value, stderr):
    return {"value": float(value), "stderr": stderr}


def _mean_metrics(per_doc, n, seed):
    return {k: _metric(v.mean(), bootstrap_stderr(v, np.mean, n, seed))
            for k, v in per_doc.items()}


def _score_multiple_choice(task, model, tokenizer, docs, n, seed, batch_size):
    return _mean_metrics(multiple_choice(model, tokenizer, docs, batch_size,
                                         task.target_delimiter), n, seed)


def exact_match(doc, answer):
    """The default generate metric: the stripped answer equals the stripped doc["answer"]."""
    return {"exact_match": float(answer.strip() == doc["answer"].strip())}


def _score_generate(task, model, tokenizer, docs, n, seed, batch_size):
    """Greedy answers in batches of batch_size, each scored by the task's process_results."""
    score = task.process_results or exact_match
    per_doc = []
    for i in range(0, len(docs), batch_size):
        chunk = docs[i:i + batch_size]
        texts = generate_until(model, tokenizer, [d["context"] for d in chunk], stop=task.stop,
                               max_new_tokens=task.max_new_tokens)
        per_doc += [score(d, t) for d, t in zip(chunk, texts)]
    names = sorted(per_doc[0])
    if any(sorted(r) != names for r in per_doc):
        raise ValueError(f"task {task.name!r}: process_results must give the same metrics for "
                         f"every document, got {sorted(per_doc[0])} and others")
    return _mean_metrics({k: np.array([float(r[k]) for r in per_doc]) for k in names}, n, seed)


def _score_perplexity(model, tokenizer, docs, n, seed, batch_size, stride):
    nll, tokens, n_bytes = [], [], []
    for d in docs:
        r = loglikelihood_rolling(model, tokenizer, d["text"], stride=stride,
                                  batch_size=batch_size)
        nll += [w[0] for w in r["windows"]]
        tokens += [w[1] for w in r["windows"]]
        # a window's bytes: the document's bytes shared in proportion to its tokens
        n_bytes += [r["bytes"] * w[1] / r["tokens"] for w in r["windows"]]
    nll, tokens, n_bytes = np.array(nll), np.array(tokens, float), np.array(n_bytes)
    stats = {"perplexity": lambda a, t, b: math.exp(a.sum() / t.sum()),
             "bits_per_byte": lambda a, t, b: a.sum() / math.log(2) / b.sum(),
             "nll_per_token": lambda a, t, b: a.sum() / t.sum()}
    return {k: _metric(f(nll, tokens, n_bytes),
                       bootstrap_stderr((nll, tokens, n_bytes), f, n, seed))
            for k, f in stats.items()}


def _score(task, model, tokenizer, docs, bootstrap, seed, batch_size, stride):
    if task.kind == "multiple_choice":
        return _score_multiple_choice(task, model, tokenizer, docs, bootstrap, seed, batch_size)
    if task.kind == "generate":
        return _score_generate(task, model, tokenizer, docs, bootstrap, seed, batch_size)
    return _score_perplexity(model, tokenizer, docs, bootstrap, seed, batch_size, stride)


def _resolve(name, tokenizer, text):
    """A Task object, a built-in or chat task name, or a .jsonl path -> the Task. The chat tasks
    need the tokenizer (for the template); they ask chat.HELD_OUT_SPLIT's held-out prompts."""
    if isinstance(name, str) and name in CHAT_BUILTIN:
        return chat_builtin([name], tokenizer, text=text)[0]
    return get_task(name, text)


def evaluate(model, tokenizer, tasks, limit=None, seed=0, bootstrap=1000, batch_size=16,
             stride=None, text=None):
    """The report dict (module docstring) of `tasks` (names, chat.CHAT_BUILTIN names for a chat
    model, .jsonl paths or Task objects).
    limit: the first `limit` documents of each task (None: all); seed: the bootstrap's;
    bootstrap: its number of samples; stride: the rolling window's (perplexity tasks);
    text: the Shakespeare text for the built-in tasks made from it."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise ValueError(f"evaluate: limit must be None or an int >= 1, got {limit!r}")
    report = {"tasks": {}, "limit": limit, "seed": seed, "bootstrap": bootstrap}
    for task in [_resolve(t, tokenizer, text) for t in tasks]:
        docs = task.docs[:limit] if limit is not None else task.docs
        try:
            metrics = _score(task, model, tokenizer, docs, bootstrap, seed, batch_size, stride)
        except ValueError as e:      # e.g. a char tokenizer without the task's digits
            raise ValueError(f"evaluate: task {task.name!r} cannot be scored with this model "
                             f"and tokenizer: {e}") from e
        report["tasks"][task.name] = {"kind": task.kind, "n_docs": len(docs), "metrics": metrics}
    return report


def _plain(stderr, digits):
    """A stderr for JSON: rounded, None where it is not defined (nan: fewer than 2 documents)."""
    return None if stderr is None or math.isnan(stderr) else round(stderr, digits)


def figure(metric, digits=3):
    """(value, stderr) of one report metric {"value", "stderr"}, rounded to `digits`, the stderr
    None where it is not defined (nan: fewer than 2 documents), so the pair is plain JSON."""
    return round(metric["value"], digits), _plain(metric["stderr"], digits)


def by_task(report, metric, digits=3):
    """({task: value}, {task: stderr}) of `metric` for every task of the report that has it,
    each as `figure` rounds it."""
    found = {name: figure(t["metrics"][metric], digits) for name, t in report["tasks"].items()
             if metric in t["metrics"]}
    return ({name: v for name, (v, _) in found.items()},
            {name: e for name, (_, e) in found.items()})


def task_mean(report, metric, names=None, digits=3):
    """(mean, stderr) of `metric` over the report's tasks `names` (default: every task with it),
    each task counting equally. The tasks' documents are drawn apart, so their bootstrap
    variances add: stderr = sqrt(sum of stderr_t^2) / k. With equal-sized tasks (task_records
    holds out `held_out` prompts of each) the mean is also the mean over all documents."""
    if names is None:
        names = [n for n, t in report["tasks"].items() if metric in t["metrics"]]
    if not names:
        raise ValueError(f"task_mean: no task in the report has the metric {metric!r}")
    lacking = [n for n in names if metric not in report["tasks"].get(n, {}).get("metrics", {})]
    if lacking:
        raise ValueError(f"task_mean: tasks {lacking} have no metric {metric!r} in the report")
    found = [report["tasks"][n]["metrics"][metric] for n in names]
    errors = [float("nan") if m["stderr"] is None else m["stderr"] for m in found]
    stderr = math.sqrt(sum(e * e for e in errors)) / len(found)
    return round(sum(m["value"] for m in found) / len(found), digits), _plain(stderr, digits)


def task_accuracy(model, template, held, batch_size=64):
    """({task: exact-match accuracy}, {task: its bootstrap stderr}) of a chat model's greedy
    answers to held = {task: records} (chat.chat_tasks through `template`), batch_size prompts
    decoded together: what the fine-tuning examples report before and after training."""
    return by_task(evaluate(model, template.tokenizer, chat_tasks(template, held),
                            batch_size=batch_size), "exact_match")
