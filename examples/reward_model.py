"""A reward model: the SFT chat model with a scalar head, trained on preference pairs with the
Bradley-Terry loss, and its accuracy on held-out pairs.

    python examples/reward_model.py            # runs finetune_sft.py first if out-sft/ is missing
    python examples/reward_model.py --max_iters=300 --learning_rate=2e-4

Pairs come from finetune/tasks.py (`preference_pairs`): for a prompt of each task (who speaks a
line, a small sum, a word reversed) the chosen answer is the right one and the rejected a
plausible wrong one (another speaker, a sum off by 1-3, the word not reversed). Each conversation
is rendered through the chat template (finetune.encode_pairs) and scored by
finetune.SequenceHead(sft_model, 1): r(x, y) = w . h_last + b, h_last the hidden state of the
assistant's end token, the last token that has read the whole exchange (Ouyang et al., 2022).
Bradley-Terry: P(y_w preferred to y_l) = sigmoid(r(x, y_w) - r(x, y_l)); the loss is
-log sigmoid(r_w - r_l) over a batch of pairs. The head starts at zero (every pair tied, 0.5).
All weights train (the Trainer: warmup and cosine decay), the backbone with `learning_rate` and
the head with `head_lr`.

Reported per task on held-out pairs (prompts never trained on, the SFT split): the reward
model's pair accuracy before and after (a tie counts 1/2), beside the SFT model's own preference
(how often log pi(y_w | x) > log pi(y_l | x): the evaluation harness's preference_task acc),
what a reward model must beat to be worth having; each with its bootstrap standard error
(tinygrad_llm.eval, the "_stderr" keys).
Writes out_dir/ckpt.safetensors (`load_reward_model` reopens it) and prints one JSON line.
"""
import dataclasses
import json
import os
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
import numpy as np  # noqa: E402

from tinygrad_llm import no_grad  # noqa: E402
from tinygrad_llm.eval import bootstrap_stderr, by_task, preference_task  # noqa: E402
from tinygrad_llm.eval import evaluate as evaluate_tasks  # noqa: E402
from tinygrad_llm.finetune import (SequenceHead, alignment_setup,  # noqa: E402
                                   bradley_terry_loss, encode_pairs, preference_pairs)
from tinygrad_llm.models import GPT, GPTConfig  # noqa: E402
from tinygrad_llm.train import (CheckpointError, TrainConfig, Trainer,  # noqa: E402
                                load_checkpoint, parse_args, run_main, save_checkpoint)

SFT = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune_sft.py")]   # makes it


@dataclasses.dataclass
class RewardArgs:
    sft: str = "out-sft/ckpt.safetensors"   # the SFT model: the reward model's backbone
    head_lr: float = 1e-3          # the new head's peak lr (the backbone's: learning_rate)
    per_task: int = 2000           # training records per task (as finetune_sft.py splits them)
    held_out: int = 60             # held-out prompts per task


# batch_size: pairs per step; min_lr a tenth of each group's peak
TRAIN_DEFAULTS = dict(max_iters=200, batch_size=16, learning_rate=1e-4, min_lr=1e-5,
                      warmup_iters=20, weight_decay=0.0, beta2=0.999, grad_clip=1.0, seed=0,
                      out_dir="out-reward")


def encode(template, pairs):
    """encode_pairs, chosen and rejected stacked into one right-padded batch: ids (2N, W)
    (rows :N chosen, N: rejected) and lengths (2N,). A conversation ends on the assistant's end
    token, the last one the template marks to learn, so its length is that index + 1."""
    enc = encode_pairs(template, pairs)
    (c_ids, c_learn), (r_ids, r_learn) = enc["chosen"], enc["rejected"]
    width = max(c_ids.shape[1], r_ids.shape[1])
    ids = np.zeros((2 * len(pairs), width), np.int64)
    ids[:len(pairs), :c_ids.shape[1]], ids[len(pairs):, :r_ids.shape[1]] = c_ids, r_ids
    lengths = np.concatenate([learn.shape[1] - np.argmax(learn[:, ::-1], axis=1)
                              for learn in (c_learn, r_learn)])
    return ids, lengths


def pair_scores(reward_model, template, pairs, batch_size=32):
    """Per pair: 1 when r(chosen) > r(rejected), 1/2 for a tie, else 0 (N,)."""
    margins = []
    reward_model.eval()
    with no_grad():
        for s in range(0, len(pairs), batch_size):
            ids, lengths = encode(template, pairs[s:s + batch_size])
            r = reward_model(ids, lengths).numpy()
            n = len(r) // 2
            margins.append(r[:n] - r[n:])
    m = np.concatenate(margins)
    return (m > 0) + 0.5 * (m == 0)


def accuracy_by_task(reward_model, template, held_pairs):
    """({task: pair accuracy}, {task: its bootstrap stderr over the pairs}) on held_pairs."""
    scores = {task: pair_scores(reward_model, template, pairs)
              for task, pairs in held_pairs.items()}
    return ({task: round(float(s.mean()), 3) for task, s in scores.items()},
            {task: round(bootstrap_stderr(s), 3) if len(s) > 1 else None
             for task, s in scores.items()})


def evaluate(reward_model, template, held_pairs):
    """{task: pair accuracy} on held_pairs (a tie counting 1/2)."""
    return accuracy_by_task(reward_model, template, held_pairs)[0]


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
    args, train_config = parse_args(argv, RewardArgs, TrainConfig,
                                    defaults={TrainConfig: TRAIN_DEFAULTS})
    backbone, template, record, train, held = alignment_setup(
        args.sft, args.per_task, args.held_out, train_config.seed, make=SFT)
    train_pairs = preference_pairs(train, seed=train_config.seed)
    held_pairs = {task: preference_pairs(records, seed=train_config.seed + 1)
                  for task, records in held.items()}
    sft_preference, sft_preference_stderr = by_task(evaluate_tasks(
        backbone, template.tokenizer,
        [preference_task(template, p, name=task) for task, p in held_pairs.items()]), "acc")
    print(f"the SFT model's own preference (log-prob) on held-out pairs: {sft_preference} "
          f"(stderr {sft_preference_stderr})")
    reward_model = SequenceHead(backbone, n_out=1)
    before, before_stderr = accuracy_by_task(reward_model, template, held_pairs)
    print(f"reward model before training: {before}")

    body = [p for p in backbone.parameters() if p.requires_grad]
    optimizer = train_config.adamw([{"params": body},
                                    {"params": list(reward_model.score.parameters())}])
    accuracies = []

    def loss_fn(model, batch):
        r = model(*encode(template, batch))                        # (2B,): chosen, rejected
        loss, acc = bradley_terry_loss(r[:len(batch)], r[len(batch):])
        accuracies.append(acc)
        return loss

    trainer = Trainer(reward_model, optimizer, train_pairs, None, train_config, loss_fn=loss_fn,
                      batch_fn=lambda pairs, rng: [pairs[i] for i in rng.integers(
                          0, len(pairs), train_config.batch_size)],
                      lr_scales=[1.0, args.head_lr / train_config.learning_rate])
    start, log = time.perf_counter(), []
    for step in range(train_config.max_iters):
        log.append((trainer.train_step(), accuracies[-1]))
        if step % 25 == 0 or step == train_config.max_iters - 1:
            recent = np.mean(log[-25:], axis=0)
            print(f"step {step}: loss {recent[0]:.4f} pair accuracy {recent[1]:.3f}", flush=True)
    wall = time.perf_counter() - start
    after, after_stderr = accuracy_by_task(reward_model, template, held_pairs)
    print(f"reward model after {train_config.max_iters} steps: {after} (stderr {after_stderr})")
    path = os.path.join(train_config.out_dir, "ckpt.safetensors")
    save_checkpoint(path, reward_model, record={
        **record, "reward_model": {"steps": train_config.max_iters, "sft": args.sft}})
    recent = np.mean(log[-20:], axis=0)
    result = {"accuracy_before": before, "accuracy_after": after,
              "sft_logprob_preference": sft_preference,
              "accuracy_before_stderr": before_stderr, "accuracy_after_stderr": after_stderr,
              "sft_logprob_preference_stderr": sft_preference_stderr,
              "mean_after": round(float(np.mean(list(after.values()))), 3),
              "steps": train_config.max_iters, "train_pairs": len(train_pairs),
              "held_out_pairs": sum(len(p) for p in held_pairs.values()),
              "final_loss": round(float(recent[0]), 4),
              "final_train_accuracy": round(float(recent[1]), 3),
              "train_s": round(wall, 1), "checkpoint": path}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
