r"""Evaluate a checkpoint on tasks: prints a table of each metric with its bootstrap standard
error and writes the report as JSON.

    python -m tinygrad_llm.eval --ckpt=out-shakespeare/ckpt.safetensors \
        --tasks=arithmetic,next_line --limit=100 --out=report.json

--tasks: built-in names (tasks.BUILTIN) or paths to .jsonl files, comma-separated; for a chat
model (a tokenizer with the chat template's special tokens, e.g. chat_speedrun's checkpoints)
also the chat tasks (chat.CHAT_BUILTIN), asked of the prompts fine-tuning held out:

    python -m tinygrad_llm.eval --ckpt=out-speedrun/quantize/ckpt.safetensors \
        --tasks=chat_arithmetic,chat_reversal,chat_who_speaks,chat_preference,shakespeare_ppl

The held-out split is the one the checkpoint's record says SFT used (finetune_sft.py writes it),
else the examples' defaults (chat.HELD_OUT_SPLIT); --per_task and --held_out override it.
"""
import dataclasses
import json
import sys

from ..train import load_model
from ..train.cli import OptionError, parse_args, run_main
from ..train.report import print_table, write_json
from .chat import CHAT_BUILTIN, HELD_OUT_SPLIT, chat_builtin
from .evaluate import evaluate
from .tasks import BUILTIN


@dataclasses.dataclass
class EvalConfig:
    ckpt: str = ""                   # checkpoint written by the examples (load_model)
    tasks: str = "shakespeare_ppl"   # comma-separated task names (chat_*: a chat model) or .jsonl
    limit: int = None                # documents per task (none: all)
    out: str = "eval_report.json"    # where the JSON report goes
    seed: int = 0                    # bootstrap seed
    bootstrap: int = 1000            # bootstrap samples per metric
    batch_size: int = 16             # continuations or windows per forward
    stride: int = None               # rolling-window stride for perplexity (none: the window)
    per_task: int = None             # chat tasks: SFT's records per task (none: ckpt's, or 2000)
    held_out: int = None             # chat tasks: held-out prompts per task (none: ckpt's, or 60)


def check_names(names):
    """Raise OptionError for a name that is neither built in nor a .jsonl path, listing all."""
    for name in names:
        if not (name in BUILTIN or name in CHAT_BUILTIN or name.endswith(".jsonl")):
            raise OptionError(f"--tasks: unknown task {name!r}; available: "
                              f"{', '.join(sorted([*BUILTIN, *CHAT_BUILTIN]))} or a path to a "
                              f".jsonl file")


def chat_split(record, config):
    """The held-out split the chat tasks ask: --per_task / --held_out, else what the record's
    "sft" entry says SFT used, else the examples' defaults (HELD_OUT_SPLIT)."""
    sft = record.get("sft", {})
    split = {k: sft.get(k, default) for k, default in HELD_OUT_SPLIT.items()}
    for key in ("per_task", "held_out"):
        value = getattr(config, key)
        if value is not None and value < 1:
            raise OptionError(f"--{key}: expected an int >= 1 (or none), got {value}")
        split[key] = split[key] if value is None else value
    return split


def resolve(names, tokenizer, split, config):
    """names with the chat tasks built as Task objects on `split`; the rest stay names for
    evaluate to look up."""
    chat = [n for n in names if n in CHAT_BUILTIN]
    try:
        built = dict(zip(chat, chat_builtin(chat, tokenizer, **split)))
    except ValueError as e:          # a tokenizer without the chat tokens
        raise OptionError(f"--tasks={config.tasks}: {e}") from None
    return [built.get(n, n) for n in names]


def main(argv):
    config, = parse_args(argv, EvalConfig)
    if not config.ckpt:
        raise OptionError("--ckpt is required: the checkpoint to evaluate")
    names = [t for t in config.tasks.split(",") if t]
    if not names:
        raise OptionError(f"--tasks: expected comma-separated task names, got {config.tasks!r}")
    check_names(names)
    model, tokenizer, record = load_model(config.ckpt)
    if tokenizer is None:
        raise OptionError(f"--ckpt={config.ckpt}: its record holds no tokenizer; the harness "
                          f"needs one to read the tasks' text")
    split = chat_split(record, config)
    tasks = resolve(names, tokenizer, split, config)
    try:
        report = evaluate(model, tokenizer, tasks, limit=config.limit, seed=config.seed,
                          bootstrap=config.bootstrap, batch_size=config.batch_size,
                          stride=config.stride)
    except ValueError as e:          # an unknown task, a malformed file, text the model can't read
        raise OptionError(f"--tasks={config.tasks}: {e}") from None
    report["ckpt"] = config.ckpt
    if any(n in CHAT_BUILTIN for n in names):
        report["chat_split"] = split     # which held-out prompts the chat tasks asked
    rows = [{"task": name, "metric": metric, "value": m["value"], "stderr": m["stderr"],
             "n_docs": entry["n_docs"]}
            for name, entry in report["tasks"].items() for metric, m in entry["metrics"].items()]
    print_table(rows, title=f"eval of {config.ckpt}")
    write_json(config.out, report)
    print(json.dumps({"out": config.out, **{f"{r['task']}/{r['metric']}": r["value"]
                                            for r in rows}}))
    return report


if __name__ == "__main__":
    run_main(main)
    sys.exit(0)
