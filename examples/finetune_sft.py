"""Supervised fine-tuning: teach a base Shakespeare model to answer instructions, and measure it.

    python examples/finetune_sft.py                     # trains the base model first if missing
    python examples/finetune_sft.py --lora --max_iters=300

The base model is the main job's GPT-2 on a BPE vocabulary that reserves the chat template's
special tokens (examples/train_shakespeare.py --tokenizer=bpe --chat_tokens; trained here,
~2 minutes, when `base` is missing). The instructions come from finetune/tasks.py: who speaks a
line of the play, what a small sum is, a word reversed. Each record is rendered through the chat
template with the loss only on the answer (a quarter more are two-turn chats, so that a second
question in a conversation is answered too), short records are packed into blocks (each attends
only to itself), and the Trainer runs `max_iters` AdamW steps on them (all weights, or LoRA
adapters with --lora). Task accuracy on held-out prompts is measured before and after by the
evaluation harness (tinygrad_llm.eval: each prompt asked through the chat template, the greedy
answer's exact match), each task's with its bootstrap standard error. Writes
out_dir/ckpt.safetensors (a checkpoint chat.py and `python -m tinygrad_llm.eval` can open; its
record keeps the held-out split, so the harness's chat tasks ask the same prompts) and prints one
JSON line.
"""
import dataclasses
import json
import os
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
import numpy as np  # noqa: E402

from tinygrad_llm.data import shakespeare  # noqa: E402
from tinygrad_llm.eval import task_accuracy  # noqa: E402
from tinygrad_llm.finetune import (SFTBatcher, apply_lora, merge_and_unload,  # noqa: E402
                                   task_records)
from tinygrad_llm.tokenizers import ChatTemplate  # noqa: E402
from tinygrad_llm.train import (TrainConfig, Trainer, ensure_checkpoint, load_model,  # noqa: E402
                                parse_args, run_main, save_checkpoint)

# trains a missing base model: the main job's command line, without its sample
TRAIN = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_shakespeare.py"),
         "--sample_tokens=0", "--progress=false"]


@dataclasses.dataclass
class SFTArgs:
    base: str = "out-base/ckpt.safetensors"   # the base model (trained if missing)
    base_iters: int = 800          # when the base model must be trained
    per_task: int = 2000           # training records per task
    held_out: int = 60             # evaluation prompts per task
    two_turn: float = 0.25         # two-turn chats added, as a fraction of the records
    lora: bool = False             # train LoRA adapters (merged at the end) instead of all weights
    lora_r: int = 16               # the adapters' rank


TRAIN_DEFAULTS = dict(max_iters=400, batch_size=16, learning_rate=1e-3, min_lr=1e-4,
                      warmup_iters=20, weight_decay=0.0, beta2=0.999, grad_clip=1.0, seed=0,
                      out_dir="out-sft")


def two_turn_chats(records, fraction, seed):
    """round(fraction * len(records)) conversations of two random records, one after the other:
    a model trained on single exchanges only loses its way in the second turn of a chat (seen in
    chat_speedrun's scripted conversation), because it never saw an answer after an answer."""
    rng = np.random.default_rng(seed + 1)
    chats = []
    for a, b in rng.integers(0, len(records), (int(round(fraction * len(records))), 2)):
        chats.append({"messages": [{"role": "user", "content": records[a]["prompt"]},
                                   {"role": "assistant", "content": records[a]["response"]},
                                   {"role": "user", "content": records[b]["prompt"]},
                                   {"role": "assistant", "content": records[b]["response"]}]})
    return chats


def main(argv):
    args, train_config = parse_args(argv, SFTArgs, TrainConfig,
                                    defaults={TrainConfig: TRAIN_DEFAULTS})
    ensure_checkpoint(args.base, [*TRAIN, "--tokenizer=bpe", "--vocab_size=1024",
                                  "--chat_tokens", f"--max_iters={args.base_iters}"])
    model, tokenizer, record = load_model(args.base)
    template = ChatTemplate(tokenizer)
    train, held = task_records(shakespeare(), args.per_task, args.held_out, train_config.seed)
    train = train + two_turn_chats(train, args.two_turn, train_config.seed)
    batcher = SFTBatcher(template, train, block_size=model.config.block_size)
    before, before_stderr = task_accuracy(model, template, held)
    print(f"before SFT: {before} (stderr {before_stderr})")

    if args.lora:
        apply_lora(model, ["*.attn.qkv", "*.attn.proj", "*.ffn.up", "*.ffn.down"],
                   r=args.lora_r, alpha=2.0 * args.lora_r)
    optimizer = train_config.adamw([p for p in model.parameters() if p.requires_grad])

    def loss_fn(model, batch):
        inputs, kw = batcher.forward_kwargs(model, batch)
        return model(inputs, **kw)[1]

    trainer = Trainer(model, optimizer, batcher, None, train_config, loss_fn=loss_fn,
                      batch_fn=lambda data, rng: data.batch(train_config.batch_size, rng))
    start, losses = time.perf_counter(), []
    for step in range(train_config.max_iters):
        losses.append(trainer.train_step())
        if step % 50 == 0 or step == train_config.max_iters - 1:
            print(f"step {step}: loss {np.mean(losses[-50:]):.4f}", flush=True)
    wall = time.perf_counter() - start
    model.eval()
    if args.lora:                  # the merged weights, in the base model's own layout
        merge_and_unload(model)
    after, after_stderr = task_accuracy(model, template, held)
    print(f"after SFT: {after} (stderr {after_stderr})")
    path = os.path.join(train_config.out_dir, "ckpt.safetensors")
    # the split, so that the harness's chat tasks ask what SFT held out (eval.chat_builtin)
    save_checkpoint(path, model, record={**record, "sft": {
        "steps": train_config.max_iters, "lora": args.lora, "per_task": args.per_task,
        "held_out": args.held_out, "seed": train_config.seed}})
    result = {"accuracy_before": before, "accuracy_after": after,
              "accuracy_before_stderr": before_stderr, "accuracy_after_stderr": after_stderr,
              "final_loss": round(float(np.mean(losses[-20:])), 4),
              "steps": train_config.max_iters, "examples": batcher.n_examples,
              "packed_blocks": len(batcher), "train_s": round(wall, 1), "lora": args.lora,
              "checkpoint": path}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
