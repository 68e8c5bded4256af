"""From nothing to a chat model in one command: BPE tokenizer -> pre-training -> SFT -> DPO ->
quantization -> a conversation, ending with a report card.

    python examples/chat_speedrun.py                      # ~10 minutes on a 2-core CPU
    python examples/chat_speedrun.py --quick              # ~6 minutes: a smaller run of each stage
    python examples/chat_speedrun.py --interactive        # then chat with the result
    python examples/chat_speedrun.py --redo=sft           # run sft and every later stage again

The stages, each the example that teaches it run with this run's settings (as a command, in a
child process: train.run_script passes its output through and reads its last line's JSON):

  1 tokenizer  byte-level BPE trained on tiny Shakespeare, with the chat template's special
               tokens reserved (tokenizers/bpe.py, tokenizers/chat.py)
  2 pretrain   a GPT-2-style model learns the play by next-token prediction (train_shakespeare.py)
  3 sft        instructions rendered through the chat template, the loss on the answers only,
               short chats packed into blocks (finetune_sft.py; the tasks are finetune/tasks.py's:
               who speaks a line, a small sum, a word reversed)
  4 dpo        preference pairs teach a style the SFT data never showed: the chosen answer ends
               ", my lord", the rejected one is the same answer without it (dpo.py, with its
               small NLL term on the chosen answers so the answers themselves stay right)
  5 quantize   the weights to llama.cpp's Q8_0 blocks: size, perplexity and decode speed
               (quantize.py)
  6 chat       a scripted two-turn conversation with the quantized model (chat.py)

Every model stage is measured the same way (`measure`), by the evaluation harness
(tinygrad_llm.eval), each figure with its bootstrap standard error (the "_stderr" keys): the loss
per token on the held-out tenth of the play (how much of Shakespeare the model knows;
loglikelihood_rolling in disjoint windows of the model's length over the first eval_windows
windows' worth of tokens, so it costs what eval_windows forward passes cost), the loss on
held-out chats' answers (how well it follows the template; loglikelihood of each answer and its
end token after the user's turn), each task's exact-match accuracy of greedy answers to held-out
prompts, and the preferred-behaviour rate (how often those answers end ", my lord"). The report
card (out_dir/report.md and report.json) has one row per stage, so the gain of each shows.
`python -m tinygrad_llm.eval --ckpt=<out_dir>/quantize/ckpt.safetensors --tasks=chat_arithmetic,
chat_reversal,chat_who_speaks,chat_preference` asks the same held-out prompts of any stage.

Resumable: a stage writes out_dir/<stage>/ and, last, its stage.json with the measurements and
the settings it was made with; a stage whose stage.json exists is skipped (its settings must be
this run's, or the run stops and says which differ). Pre-training also resumes inside the stage
from its last checkpoint (every 500 steps, and on Ctrl-C).
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
import numpy as np  # noqa: E402

from tinygrad_llm.data import shakespeare, split  # noqa: E402
from tinygrad_llm.data.files import atomic_write  # noqa: E402
from tinygrad_llm.eval import (Task, bootstrap_stderr, by_task, chat_context,  # noqa: E402
                               chat_tasks, evaluate, figure, loglikelihood, split_request,
                               task_mean)
from tinygrad_llm.finetune import TASKS, task_records  # noqa: E402
from tinygrad_llm.tokenizers import CHAT_SPECIAL_TOKENS, BPETokenizer, ChatTemplate  # noqa: E402
from tinygrad_llm.train import (load_model, parse_overrides, run_main, run_script,  # noqa: E402
                                split_overrides)

HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = ("tokenizer", "pretrain", "sft", "dpo", "quantize", "chat")


@dataclasses.dataclass
class SpeedrunArgs:
    out_dir: str = None           # where the stages go (none: out-speedrun, or out-speedrun-quick)
    quick: bool = False           # the QUICK settings below, for whatever is not given
    redo: str = ""                # a stage: run it and every later stage again
    interactive: bool = False     # at the end, chat with the result in the terminal
    vocab_size: int = 1024        # the BPE vocabulary
    n_layer: int = 4              # the model's layers
    n_embd: int = 192             # the model's width
    # 2 M parameters on ~0.5 M tokens: validation loss is lowest near 2000 steps (3.53) and
    # rises after (3.62 at 2500)
    base_iters: int = 2000        # pre-training steps
    sft_iters: int = 600          # SFT steps
    dpo_iters: int = 150          # DPO steps
    dpo_sft_coef: float = 0.5     # DPO's NLL term on the chosen answers (dpo.py's sft_coef)
    quant_scheme: str = "q8_0"    # the quantize stage's scheme
    per_task: int = 2000          # SFT / DPO records per task
    held_out: int = 60            # held-out prompts per task (accuracy, behaviour rate)
    eval_windows: int = 100       # held-out windows' worth of the play for the validation loss
    seed: int = 0                 # seeds every stage


# the settings each stage adds to what it depends on (measure() uses held_out and eval_windows
# from pre-training on); a finished stage whose settings differ from this run's is not reused
STAGE_SETTINGS = {"tokenizer": ("vocab_size", "seed"),
                  "pretrain": ("n_layer", "n_embd", "base_iters", "held_out", "eval_windows"),
                  "sft": ("sft_iters", "per_task"), "dpo": ("dpo_iters", "dpo_sft_coef"),
                  "quantize": ("quant_scheme",), "chat": ()}

QUICK = dict(base_iters=700, sft_iters=300, dpo_iters=100, held_out=30, eval_windows=40)

CONVERSATION = ["What is 23+19?", "Reverse: gentle"]


def example(name, *options, input=None):
    """Run examples/<name> with `options`; its JSON result."""
    return run_script([os.path.join(HERE, name), *options], input=input)


# ---- measuring a model ----------------------------------------------------------------------
def _per_token(nll, tokens):
    return nll.sum() / tokens.sum()


def chat_loss(model, template, records):
    """{"value", "stderr"}: the mean loss per token of the records' answers and end tokens after
    their user turns (the tokens SFT learns, each record read alone, as SFT's packing with a
    segment mask reads it), and its bootstrap stderr over the records."""
    tok, end = template.tokenizer, template.end_token
    requests = [(chat_context(template, r["prompt"]), r["response"] + end) for r in records]
    nll = -np.array([s for s, _ in loglikelihood(model, tok, requests)])            # (N,)
    tokens = np.array([len(split_request(tok, *q)[1]) for q in requests], float)    # (N,)
    return {"value": float(_per_token(nll, tokens)),
            "stderr": bootstrap_stderr((nll, tokens), _per_token)}


def measure(model, template, held, val_text):
    """The same numbers for every model stage (see the docstring), from one harness run."""
    model.eval()
    # batch_size: prompts decoded together, windows per forward
    report = evaluate(model, template.tokenizer, [Task("val", "perplexity", [{"text": val_text}]),
                                                  *chat_tasks(template, held)], batch_size=64)
    val, val_stderr = figure(report["tasks"]["val"]["metrics"]["nll_per_token"], 4)
    chat, chat_stderr = figure(chat_loss(model, template,
                                         [r for rs in held.values() for r in rs]), 4)
    accuracy, accuracy_stderr = by_task(report, "exact_match")
    mean_accuracy, mean_stderr = task_mean(report, "exact_match")
    rate, rate_stderr = task_mean(report, "courtesy")
    return {"val_loss": val, "chat_val_loss": chat, "accuracy": accuracy,
            "mean_accuracy": mean_accuracy, "behaviour_rate": rate, "val_loss_stderr": val_stderr,
            "chat_val_loss_stderr": chat_stderr, "accuracy_stderr": accuracy_stderr,
            "mean_accuracy_stderr": mean_stderr, "behaviour_rate_stderr": rate_stderr}


# ---- the stages -----------------------------------------------------------------------------
class Speedrun:
    def __init__(self, args):
        self.args = args
        self.dir = {s: os.path.join(args.out_dir, s) for s in STAGES}
        self.ckpt = {s: os.path.join(self.dir[s], "ckpt.safetensors") for s in STAGES}
        self.tokenizer_file = os.path.join(self.dir["tokenizer"], "tokenizer.json")
        self._eval = None

    def evaluation_data(self, window):
        """The held-out prompts (split exactly as finetune_sft.py splits them, so SFT never
        trained on them) and the validation text: the held-out tenth of the play, cut after
        eval_windows * window tokens of this run's tokenizer (the cost of eval_windows
        forwards)."""
        if self._eval is None:
            a = self.args
            tokenizer = BPETokenizer.load(self.tokenizer_file)
            _, held = task_records(shakespeare(), a.per_task, a.held_out, a.seed)
            _, val_text = split(shakespeare(), 0.1)
            val_text = tokenizer.decode(tokenizer.encode(val_text)[:a.eval_windows * window + 1])
            self._eval = ChatTemplate(tokenizer), held, val_text
        return self._eval

    def measure(self, path):
        model, _, _ = load_model(path)
        return measure(model, *self.evaluation_data(model.config.max_positions))

    def tokenizer(self):
        a = self.args
        text = shakespeare()
        tokenizer = BPETokenizer.train(text, a.vocab_size,
                                       special_tokens=("<|endoftext|>",) + CHAT_SPECIAL_TOKENS)
        tokenizer.save(self.tokenizer_file)
        _, val_text = split(text, 0.1)
        return {"vocab_size": tokenizer.vocab_size,
                "chars_per_token": round(len(val_text) / len(tokenizer.encode(val_text)), 3)}

    def pretrain(self):
        a = self.args
        options = ["--tokenizer=bpe", f"--tokenizer_file={self.tokenizer_file}",
                   f"--n_layer={a.n_layer}", f"--n_embd={a.n_embd}",
                   f"--max_iters={a.base_iters}", f"--out_dir={self.dir['pretrain']}",
                   "--sample_tokens=0", f"--seed={a.seed}"]
        if os.path.exists(self.ckpt["pretrain"]):
            options.append("--resume")               # continue an interrupted pre-training
        result = example("train_shakespeare.py", *options)
        if result["steps"] < a.base_iters:          # Ctrl-C: the checkpoint is saved
            raise SystemExit(f"pre-training stopped at step {result['steps']} of "
                             f"{a.base_iters}; run again to continue")
        return {"steps": result["steps"], "parameters": result["parameters"],
                **self.measure(self.ckpt["pretrain"])}

    def sft(self):
        a = self.args
        result = example("finetune_sft.py", f"--base={self.ckpt['pretrain']}",
                         f"--out_dir={self.dir['sft']}", f"--max_iters={a.sft_iters}",
                         f"--per_task={a.per_task}", f"--held_out={a.held_out}",
                         f"--seed={a.seed}")
        return {"steps": a.sft_iters, "examples": result["examples"],
                **self.measure(self.ckpt["sft"])}

    def dpo(self):
        a = self.args
        result = example("dpo.py", f"--sft={self.ckpt['sft']}", f"--out_dir={self.dir['dpo']}",
                         f"--max_iters={a.dpo_iters}", f"--sft_coef={a.dpo_sft_coef}",
                         f"--per_task={a.per_task}", f"--held_out={a.held_out}",
                         f"--seed={a.seed}")
        return {"steps": a.dpo_iters, "preference_rate": result["after"]["preference_rate"],
                "preference_rate_stderr": result["after"]["preference_rate_stderr"],
                **self.measure(self.ckpt["dpo"])}

    def quantize(self):
        a = self.args
        result = example("quantize.py", f"--ckpt={self.ckpt['dpo']}",
                         f"--scheme={a.quant_scheme}", f"--out_dir={self.dir['quantize']}",
                         "--prompt=<|user|>", "--max_new_tokens=24",
                         f"--eval_windows={a.eval_windows}")
        return {"scheme": a.quant_scheme, "file_mb": result["quantized"]["file_mb"],
                "float_file_mb": result["float32"]["file_mb"],
                "tokens_per_s": result["quantized"]["tokens_per_s"],
                "float_tokens_per_s": result["float32"]["tokens_per_s"],
                **self.measure(self.ckpt["quantize"])}

    def chat(self):
        summary = example("chat.py", f"--ckpt={self.ckpt['quantize']}", "--temperature=0",
                          "--max_new_tokens=24", input="".join(m + "\n" for m in CONVERSATION))
        turns = [{"user": m, "assistant": r} for m, r in zip(CONVERSATION, summary["replies"])]
        return {"conversation": turns, "tokens_per_s": summary["tokens_per_s"]}

    # ---- running them, resumably --------------------------------------------------------------
    def settings(self, stage):
        """The settings `stage`'s output depends on: its own and every earlier stage's."""
        keys = [k for s in STAGES[:STAGES.index(stage) + 1] for k in STAGE_SETTINGS[s]]
        return {k: getattr(self.args, k) for k in keys}

    def run_stage(self, stage):
        path = os.path.join(self.dir[stage], "stage.json")
        if os.path.exists(path):
            with open(path) as f:
                result = json.load(f)
            changed = {k: (result["settings"].get(k), v) for k, v in self.settings(stage).items()
                       if result["settings"].get(k) != v}
            if changed:
                raise SystemExit(
                    f"{path} was made with other settings ("
                    + ", ".join(f"{k} {old!r}, now {new!r}" for k, (old, new) in changed.items())
                    + f"): pass --redo={stage} (or an earlier stage) to run it again, or use "
                    f"another --out_dir")
            print(f"== {stage}: done earlier ({path}), skipped", flush=True)
            return {**result, "skipped": True}
        print(f"== {stage}", flush=True)
        os.makedirs(self.dir[stage], exist_ok=True)
        start = time.perf_counter()
        result = getattr(self, stage)()
        result = {"stage": stage, "wall_s": round(time.perf_counter() - start, 1), **result,
                  "settings": self.settings(stage)}
        with atomic_write(path, "w", encoding="utf-8") as f:     # last: the stage is complete
            json.dump(result, f, indent=1)
        return {**result, "skipped": False}

    def forget(self, stage):
        """Make `stage` and every later one run again."""
        if stage not in STAGES:
            raise ValueError(f"--redo must be one of {list(STAGES)}, got {stage!r}")
        for s in STAGES[STAGES.index(stage):]:
            if os.path.isdir(self.dir[s]):
                shutil.rmtree(self.dir[s])


# ---- the report card ------------------------------------------------------------------------
def report_card(results, args):
    """(markdown text, JSON-able dict)."""
    total = sum(r["wall_s"] for r in results.values())
    rows = ["| stage | wall s | val loss | chat val loss | " +
            " | ".join(f"{t} acc" for t in TASKS) + " | mean acc | ', my lord' rate | notes |",
            "|---" * (7 + len(TASKS)) + "|"]
    for stage, r in results.items():
        cells = [stage, f"{r['wall_s']:.0f}"]
        if "val_loss" in r:
            cells += [f"{r['val_loss']:.3f}", f"{r['chat_val_loss']:.3f}"]
            cells += [f"{r['accuracy'][t]:.2f}" for t in TASKS]
            cells.append(_with_stderr(r["mean_accuracy"], r.get("mean_accuracy_stderr")))
            cells.append(f"{r['behaviour_rate']:.2f}")
        else:
            cells += [""] * (4 + len(TASKS))
        cells.append(_notes(stage, r))
        rows.append("| " + " | ".join(cells) + " |")
    lines = [f"# chat_speedrun report card ({'quick' if args.quick else 'full'})", "",
             f"Total wall time: {total:.0f} s ({total / 60:.1f} min) on {os.cpu_count()} cores.",
             "", *rows, "",
             "Figures from the evaluation harness (tinygrad_llm.eval) on held-out text and "
             "prompts; ± is the bootstrap standard error.", ""]
    conversation = results.get("chat", {}).get("conversation", [])
    if conversation:
        lines += ["Conversation with the quantized model (greedy):", "", "```"]
        for turn in conversation:
            lines += [f"you> {turn['user']}", f"assistant> {turn['assistant']}"]
        lines += ["```", ""]
    card = {"preset": "quick" if args.quick else "full", "total_wall_s": round(total, 1),
            "settings": dataclasses.asdict(args), "stages": results}
    return "\n".join(lines), card


def _with_stderr(value, stderr):
    """"0.43 ± 0.04": a figure and its bootstrap standard error (the value alone when a stage
    was measured without one)."""
    return f"{value:.2f}" if stderr is None else f"{value:.2f} ± {stderr:.2f}"


def _notes(stage, r):
    if stage == "tokenizer":
        return f"vocab {r['vocab_size']}, {r['chars_per_token']} chars/token"
    if stage == "pretrain":
        return f"{r['steps']} steps, {r['parameters'] / 1e6:.2f}M parameters"
    if stage == "sft":
        return f"{r['steps']} steps on {r['examples']} chats"
    if stage == "dpo":
        rate = _with_stderr(r["preference_rate"], r.get("preference_rate_stderr"))
        return f"{r['steps']} steps, held-out preference rate {rate}"
    if stage == "quantize":
        return (f"{r['scheme']}: {r['file_mb']} MB (float {r['float_file_mb']} MB), "
                f"{r['tokens_per_s']:.0f} tok/s (float {r['float_tokens_per_s']:.0f})")
    if stage == "chat":
        return f"{len(r['conversation'])} turns, {r['tokens_per_s']} tok/s"
    return ""


def main(argv):
    (kw,) = split_overrides(parse_overrides(argv), SpeedrunArgs)
    if kw.get("quick"):
        kw = {**QUICK, **kw}
    args = SpeedrunArgs(**kw)
    if args.out_dir is None:
        args.out_dir = "out-speedrun-quick" if args.quick else "out-speedrun"
    run = Speedrun(args)
    if args.redo:
        run.forget(args.redo)
    results = {stage: run.run_stage(stage) for stage in STAGES}
    markdown, card = report_card(results, args)
    with atomic_write(os.path.join(args.out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    with atomic_write(os.path.join(args.out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(card, f, indent=1)
    print(markdown)
    if args.interactive:            # the terminal is the child's: its prompts and streaming
        subprocess.run([sys.executable, os.path.join(HERE, "chat.py"),
                        f"--ckpt={run.ckpt['quantize']}"])
    print(json.dumps({"total_wall_s": card["total_wall_s"], "report": os.path.join(
        args.out_dir, "report.md"), **{s: {k: v for k, v in r.items() if k in (
            "wall_s", "val_loss", "mean_accuracy", "mean_accuracy_stderr", "behaviour_rate")}
            for s, r in results.items()}}))
    return card


if __name__ == "__main__":
    run_main(main)
