"""A reward model: the SFT chat model with a scalar head, trained on preference pairs with the
Bradley-Terry loss, and its accuracy on held-out pairs.

    python examples/reward_model.py            # runs finetune_sft.py first if out-sft/ is missing
    python examples/reward_model.py --steps=300 --learning_rate=2e-4

Pairs come from finetune/tasks.py (`preference_pairs`): for a prompt of each task (who speaks a
line, a small sum, a word reversed) the chosen answer is the right one and the rejected a
plausible wrong one (another speaker, a sum off by 1-3, the word not reversed). Each conversation
is rendered through the chat template (dpo.encode_pairs) and scored by
finetune.SequenceHead(sft_model, 1): r(x, y) = w . h_last + b, h_last the hidden state of the
assistant's end token, the last token that has read the whole exchange (Ouyang et al., 2022).
Bradley-Terry: P(y_w preferred to y_l) = sigmoid(r(x, y_w) - r(x, y_l)); the loss is
-log sigmoid(r_w - r_l) over a batch of pairs. The head starts at zero (every pair tied, 0.5).
All weights train, the backbone with `learning_rate` and the head with `head_lr`.

Reported per task on held-out pairs (prompts never trained on, the SFT split): the reward
model's pair accuracy before and after (a tie counts 1/2), beside the SFT model's own preference
(how often log pi(y_w | x) > log pi(y_l | x)), what a reward model must beat to be worth having.
Writes `out` (`load_reward_model` reopens it) and prints one JSON line.
"""
import dataclasses
import json
import os
import sys
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
import numpy as np  # noqa: E402

from tinygrad_llm import no_grad  # noqa: E402
from tinygrad_llm.finetune import SequenceHead, bradley_terry_loss  # noqa: E402
from tinygrad_llm.finetune.tasks import preference_pairs  # noqa: E402
from tinygrad_llm.models import GPT, GPTConfig  # noqa: E402
from tinygrad_llm.optim import AdamW, LambdaLR, clip_grad_norm_, warmup_cosine  # noqa: E402
from tinygrad_llm.train import (CheckpointError, load_checkpoint,  # noqa: E402
                                parse_overrides, save_checkpoint, split_overrides)
from tinygrad_llm.train import run_main  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dpo  # noqa: E402
import finetune_sft  # noqa: E402


@dataclasses.dataclass
class RewardArgs:
    sft: str = "out-sft/ckpt.safetensors"
    out: str = "out-reward/ckpt.safetensors"
    steps: int = 200
    batch_size: int = 16           # pairs per step
    learning_rate: float = 1e-4    # the backbone's peak
    head_lr: float = 1e-3
    warmup: int = 20
    per_task: int = 2000
    held_out: int = 60
    seed: int = 0


def encode(template, pairs):
    """dpo.encode_pairs, chosen and rejected stacked into one right-padded batch: ids (2N, W)
    (rows :N chosen, N: rejected) and lengths (2N,). A conversation ends on the assistant's end
    token, the last one the template marks to learn, so its length is that index + 1."""
    enc = dpo.encode_pairs(template, pairs)
    (c_ids, c_learn), (r_ids, r_learn) = enc["chosen"], enc["rejected"]
    width = max(c_ids.shape[1], r_ids.shape[1])
    ids = np.zeros((2 * len(pairs), width), np.int64)
    ids[:len(pairs), :c_ids.shape[1]], ids[len(pairs):, :r_ids.shape[1]] = c_ids, r_ids
    lengths = np.concatenate([learn.shape[1] - np.argmax(learn[:, ::-1], axis=1)
                              for learn in (c_learn, r_learn)])
    return ids, lengths


def pair_accuracy(reward_model, template, pairs, batch_size=32):
    """How often r(chosen) > r(rejected) on `pairs`, a tie counting 1/2."""
    margins = []
    reward_model.eval()
    with no_grad():
        for s in range(0, len(pairs), batch_size):
            ids, lengths = encode(template, pairs[s:s + batch_size])
            r = reward_model(ids, lengths).numpy()
            n = len(r) // 2
            margins.append(r[:n] - r[n:])
    m = np.concatenate(margins)
    return float((m > 0).mean() + 0.5 * (m == 0).mean())


def evaluate(reward_model, template, held_pairs):
    return {task: round(pair_accuracy(reward_model, template, pairs), 3)
            for task, pairs in held_pairs.items()}


def load_reward_model(path):
    """(SequenceHead over a GPT, in eval mode, record) from this example's `out`."""
    state, _, record = load_checkpoint(path)
    if "reward_model" not in record:
        raise CheckpointError(f"{path}: not a reward model (no 'reward_model' in the record; "
                              f"keys {sorted(record)})")
    model = SequenceHead(GPT(GPTConfig(**record["model_config"])), n_out=1)
    model.load_state_dict(state)
    return model.eval(), record


def main(argv):
    (kw,) = split_overrides(parse_overrides(argv), RewardArgs)
    args = RewardArgs(**kw)
    backbone, _, record, template, train, held = finetune_sft.alignment_setup(
        args.sft, args.per_task, args.held_out, args.seed)
    train_pairs = preference_pairs(train, seed=args.seed)
    held_pairs = {task: preference_pairs(records, seed=args.seed + 1)
                  for task, records in held.items()}
    sft_preference = {task: round(dpo.preference_rate(backbone, dpo.encode_pairs(template, p)), 3)
                      for task, p in held_pairs.items()}
    print(f"the SFT model's own preference (log-prob) on held-out pairs: {sft_preference}")
    reward_model = SequenceHead(backbone, n_out=1)
    before = evaluate(reward_model, template, held_pairs)
    print(f"reward model before training: {before}")

    body = [p for p in backbone.parameters() if p.requires_grad]
    head = list(reward_model.score.parameters())
    optimizer = AdamW([{"params": body, "lr": args.learning_rate},
                       {"params": head, "lr": args.head_lr}], weight_decay=0.0)
    schedule = LambdaLR(optimizer, lambda step: warmup_cosine(      # both peaks, one shape
        step, 1.0, 0.1, min(args.warmup, args.steps), args.steps))
    rng = np.random.default_rng(args.seed)
    reward_model.train()
    start, log = time.perf_counter(), []
    for step in range(args.steps):
        batch = [train_pairs[i] for i in rng.integers(0, len(train_pairs), args.batch_size)]
        r = reward_model(*encode(template, batch))                 # (2B,): chosen, rejected
        loss, acc = bradley_terry_loss(r[:len(batch)], r[len(batch):])
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(body + head, 1.0)
        optimizer.step()
        schedule.step()
        log.append((float(loss.numpy()), acc))
        if step % 25 == 0 or step == args.steps - 1:
            recent = np.mean(log[-25:], axis=0)
            print(f"step {step}: loss {recent[0]:.4f} pair accuracy {recent[1]:.3f}", flush=True)
    wall = time.perf_counter() - start
    after = evaluate(reward_model, template, held_pairs)
    print(f"reward model after {args.steps} steps: {after}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    save_checkpoint(args.out, reward_model, record={
        **record, "reward_model": {"steps": args.steps, "sft": args.sft}})
    recent = np.mean(log[-20:], axis=0)
    result = {"accuracy_before": before, "accuracy_after": after,
              "sft_logprob_preference": sft_preference,
              "mean_after": round(float(np.mean(list(after.values()))), 3),
              "steps": args.steps, "train_pairs": len(train_pairs),
              "held_out_pairs": sum(len(p) for p in held_pairs.values()),
              "final_loss": round(float(recent[0]), 4),
              "final_train_accuracy": round(float(recent[1]), 3),
              "train_s": round(wall, 1), "checkpoint": args.out}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
