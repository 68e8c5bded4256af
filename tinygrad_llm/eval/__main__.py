r"""Evaluate a checkpoint on tasks: prints a table of each metric with its bootstrap standard
error and writes the report as JSON.

    python -m tinygrad_llm.eval --ckpt=out-shakespeare/ckpt.safetensors \
        --tasks=arithmetic,next_line --limit=100 --out=report.json

--tasks: built-in names (tasks.BUILTIN) or paths to .jsonl files, comma-separated.
"""
import dataclasses
import json
import sys

from ..train import load_model
from ..train.cli import OptionError, parse_args, run_main
from ..train.report import print_table, write_json
from .evaluate import evaluate


@dataclasses.dataclass
class EvalConfig:
    ckpt: str = ""                   # checkpoint written by the examples (load_model)
    tasks: str = "shakespeare_ppl"   # comma-separated task names or .jsonl paths
    limit: int = None                # documents per task (none: all)
    out: str = "eval_report.json"    # where the JSON report goes
    seed: int = 0                    # bootstrap seed
    bootstrap: int = 1000            # bootstrap samples per metric
    batch_size: int = 16             # continuations or windows per forward
    stride: int = None               # rolling-window stride for perplexity (none: the window)


def main(argv):
    config, = parse_args(argv, EvalConfig)
    if not config.ckpt:
        raise OptionError("--ckpt is required: the checkpoint to evaluate")
    names = [t for t in config.tasks.split(",") if t]
    if not names:
        raise OptionError(f"--tasks: expected comma-separated task names, got {config.tasks!r}")
    model, tokenizer, _ = load_model(config.ckpt)
    if tokenizer is None:
        raise OptionError(f"--ckpt={config.ckpt}: its record holds no tokenizer; the harness "
                          f"needs one to read the tasks' text")
    try:
        report = evaluate(model, tokenizer, names, limit=config.limit, seed=config.seed,
                          bootstrap=config.bootstrap, batch_size=config.batch_size,
                          stride=config.stride)
    except ValueError as e:          # an unknown task, a malformed file, text the model can't read
        raise OptionError(f"--tasks={config.tasks}: {e}") from None
    report["ckpt"] = config.ckpt
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
