"""Supervised fine-tuning: teach a base Shakespeare model to answer instructions, and measure it.

    python examples/finetune_sft.py                     # trains the base model first if missing
    python examples/finetune_sft.py --lora=true --steps=300

The base model is the main job's GPT-2 on a BPE vocabulary that reserves the chat template's
special tokens (examples/train_shakespeare.py --tokenizer=bpe --chat_tokens=true; trained here,
~2 minutes, when `base` is missing). The instructions come from finetune/tasks.py: who speaks a
line of the play, what a small sum is, a word reversed. Each record is rendered through the chat
template with the loss only on the answer (a quarter more are two-turn chats, so that a second
question in a conversation is answered too), short records are packed into blocks (each attends
only to itself), and the model is trained for `steps` AdamW steps (all weights, or LoRA adapters
with --lora=true). Task accuracy (exact answer, greedy decoding) on held-out prompts is measured
before and after. Writes `out` (a checkpoint chat.py can open) and prints one JSON line.
"""
import dataclasses
import json
import os
import sys
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
import numpy as np  # noqa: E402

from tinygrad_llm.data import shakespeare  # noqa: E402
from tinygrad_llm.finetune import SFTBatcher, apply_lora, merge_and_unload  # noqa: E402
from tinygrad_llm.finetune.tasks import (answer_is_correct, arithmetic, reversal,  # noqa: E402
                                         split_records, who_speaks)
from tinygrad_llm.generate import generate  # noqa: E402
from tinygrad_llm.optim import AdamW, clip_grad_norm_, set_lr, warmup_cosine  # noqa: E402
from tinygrad_llm.tokenizers import ChatTemplate, tokenizer_from_dict  # noqa: E402
from tinygrad_llm.train import (load_model, parse_overrides, save_checkpoint,  # noqa: E402
                                split_overrides)
from tinygrad_llm.train import run_main  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_shakespeare  # noqa: E402


@dataclasses.dataclass
class SFTArgs:
    base: str = "out-base/ckpt.safetensors"
    base_iters: int = 800          # when the base model must be trained
    out: str = "out-sft/ckpt.safetensors"
    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 20
    per_task: int = 2000           # training records per task
    held_out: int = 60             # evaluation prompts per task
    two_turn: float = 0.25         # two-turn chats added, as a fraction of the records
    lora: bool = False
    lora_r: int = 16
    seed: int = 0


def ensure_base(args):
    train_shakespeare.ensure_checkpoint(args.base, [
        "--tokenizer=bpe", "--vocab_size=1024", "--chat_tokens=true",
        f"--max_iters={args.base_iters}"])


def task_records(args):
    text = shakespeare()
    tasks = {"who_speaks": who_speaks(text, n=args.per_task + args.held_out, seed=args.seed),
             "arithmetic": arithmetic(args.per_task + args.held_out, seed=args.seed),
             "reversal": reversal(args.per_task + args.held_out, seed=args.seed)}
    train, held = [], {}
    for name, records in tasks.items():
        fraction = args.held_out / len(records)
        t, h = split_records(records, fraction, seed=args.seed)
        train += t
        held[name] = h
    return train, held


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


def answers(model, template, records, max_new_tokens=12):
    """The model's greedy answers (text) to the records' prompts."""
    prompts = [template.render([{"role": "user", "content": r["prompt"]}],
                               add_generation_prompt=True)[0] for r in records]
    outs = generate(model, prompts, max_new_tokens, temperature=0, stop_ids=[template.end_id])
    return [template.tokenizer.decode([int(t) for t in o[len(p):] if int(t) != template.end_id])
            for p, o in zip(prompts, outs)]


def accuracy(model, template, records, max_new_tokens=12):
    """Exact-match accuracy of greedy answers to the records' prompts."""
    got = answers(model, template, records, max_new_tokens)
    return sum(answer_is_correct(r, a) for r, a in zip(records, got)) / len(records)


def evaluate(model, template, held):
    return {name: round(accuracy(model, template, records), 3) for name, records in held.items()}


def alignment_setup(sft, per_task, held_out, seed):
    """What DPO and RLHF start from: the SFT model twice (the policy to train and the frozen
    reference), its chat template, and this example's task records split the same way (so the
    held-out prompts were never trained on). Runs this example first when `sft` is missing."""
    if not os.path.exists(sft):
        main([f"--out={sft}"])
    policy, record = load_model(sft)
    reference, _ = load_model(sft)
    template = ChatTemplate(tokenizer_from_dict(record["tokenizer"]))
    train, held = task_records(SFTArgs(per_task=per_task, held_out=held_out, seed=seed))
    return policy, reference, record, template, train, held


def main(argv):
    (kw,) = split_overrides(parse_overrides(argv), SFTArgs)
    args = SFTArgs(**kw)
    ensure_base(args)
    model, record = load_model(args.base)
    tokenizer = tokenizer_from_dict(record["tokenizer"])
    template = ChatTemplate(tokenizer)
    train, held = task_records(args)
    train = train + two_turn_chats(train, args.two_turn, args.seed)
    block = model.config.block_size
    batcher = SFTBatcher(template, train, block_size=block)
    before = evaluate(model, template, held)
    print(f"before SFT: {before}")

    if args.lora:
        apply_lora(model, ["*.attn.qkv", "*.attn.proj", "*.ffn.up", "*.ffn.down"],
                   r=args.lora_r, alpha=2.0 * args.lora_r)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = AdamW(params, lr=args.learning_rate, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    model.train()
    start, losses = time.perf_counter(), []
    for step in range(args.steps):
        set_lr(optimizer, warmup_cosine(step, args.learning_rate, args.min_lr,
                                        min(args.warmup, args.steps), args.steps))
        inputs, kw = batcher.forward_kwargs(model, batcher.batch(args.batch_size, rng))
        _, loss = model(inputs, **kw)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.numpy()))
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {np.mean(losses[-50:]):.4f}", flush=True)
    wall = time.perf_counter() - start
    model.eval()
    if args.lora:                  # the merged weights, in the base model's own layout
        merge_and_unload(model)
    after = evaluate(model, template, held)
    print(f"after SFT: {after}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    save_checkpoint(args.out, model, record={**record, "sft": {"steps": args.steps,
                                                               "lora": args.lora}})
    result = {"accuracy_before": before, "accuracy_after": after,
              "final_loss": round(float(np.mean(losses[-20:])), 4), "steps": args.steps,
              "examples": batcher.n_examples, "packed_blocks": len(batcher),
              "train_s": round(wall, 1), "lora": args.lora, "checkpoint": args.out}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
