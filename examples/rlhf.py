"""RLHF with a programmatic reward: the SFT model samples answers, a checker scores them, and
REINFORCE with a baseline and a KL penalty to the SFT model (finetune/rlhf.py) makes the rewarded
answers likelier.

    python examples/rlhf.py                  # runs finetune_sft.py first if out-sft/ is missing
    python examples/rlhf.py --max_iters=150 --kl_coef=0.05 --tasks=arithmetic,who_speaks

The reward is 1 for an exactly right answer and 0 otherwise (finetune/tasks.py checks it), on the
tasks the SFT model still gets wrong most of the time, so there is something to learn. The
baseline is a running mean of the reward. With --group_size=k each step samples k answers to
each of batch_size / k prompts instead, and an answer's baseline is the mean reward of the other
answers to its prompt (finetune/rlhf.py). Measured here (300 steps): the running mean raised the
sampled reward on training prompts 0.265 -> 0.295; k = 4 lowered it to 0.225 (8 prompts a step
instead of 32, and most groups all wrong, so all-zero advantages). The Trainer runs the steps at
a constant learning rate: its batch function samples the answers from the policy as it is at
that step (on-policy) and scores them, its loss function is Reinforce's. Reported
before and after: the mean reward of sampled answers (temperature `temperature`) on 200 fixed
training prompts (the objective) and on held-out prompts (generalisation), the greedy held-out
accuracy (the evaluation harness's chat tasks, tinygrad_llm.eval), each with its bootstrap
standard error (the "_stderr" keys), and the KL to the reference at the end. One JSON line.
"""
import dataclasses
import json
import os
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
import numpy as np  # noqa: E402

from tinygrad_llm.eval import bootstrap_stderr, task_accuracy  # noqa: E402
from tinygrad_llm.finetune import Reinforce, alignment_setup, rollout  # noqa: E402
from tinygrad_llm.finetune.tasks import answer_is_correct  # noqa: E402
from tinygrad_llm.train import (TrainConfig, Trainer, load_model, parse_args,  # noqa: E402
                                run_main, save_checkpoint)

SFT = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune_sft.py")]   # makes it


@dataclasses.dataclass
class RLHFArgs:
    sft: str = "out-sft/ckpt.safetensors"   # the policy starts as this model, the KL's reference
    tasks: str = "arithmetic,who_speaks"    # the tasks rewarded, comma-separated
    # one sample per prompt and a running-mean baseline does better here than groups (see above)
    group_size: int = 1             # samples per prompt (> 1: the leave-one-out baseline)
    kl_coef: float = 0.05           # beta: the KL penalty to the reference
    temperature: float = 1.0        # the sampling temperature
    max_new_tokens: int = 8         # the longest sampled answer
    per_task: int = 2000            # training records per task (as finetune_sft.py splits them)
    held_out: int = 60              # held-out prompts per task


# batch_size: samples per step (batch_size / group_size prompts); a constant learning rate
TRAIN_DEFAULTS = dict(max_iters=300, batch_size=32, learning_rate=1e-4, min_lr=1e-4,
                      warmup_iters=0, weight_decay=0.0, beta2=0.999, grad_clip=1.0, seed=0,
                      out_dir="out-rlhf")


def sampled_reward(model, template, records, temperature, seed, max_new_tokens):
    prompts = [template.render([{"role": "user", "content": r["prompt"]}],
                               add_generation_prompt=True)[0] for r in records]
    ids, learn, responses = rollout(model, prompts, max_new_tokens, temperature=temperature,
                                    seed=seed, stop_ids=[template.end_id])
    text = [template.tokenizer.decode([int(t) for t in r if int(t) != template.end_id])
            for r in responses]
    rewards = np.array([float(answer_is_correct(rec, a)) for rec, a in zip(records, text)])
    return ids, learn, rewards


def main(argv):
    args, train_config = parse_args(argv, RLHFArgs, TrainConfig,
                                    defaults={TrainConfig: TRAIN_DEFAULTS})
    seed = train_config.seed
    policy, template, record, train, held = alignment_setup(
        args.sft, args.per_task, args.held_out, seed, make=SFT)
    reference, _, _ = load_model(args.sft)
    names = args.tasks.split(",")
    train = [r for r in train if r["task"] in names]
    held = {k: v for k, v in held.items() if k in names}
    held_records = [r for rs in held.values() for r in rs]

    probe = [train[i] for i in np.random.default_rng(seed + 3).integers(0, len(train), 200)]

    def measure(model):
        """Mean sampled reward on 200 fixed training prompts (the objective RL maximises) and on
        the held-out ones, and greedy held-out accuracy, each with its bootstrap stderr."""
        rewards, stderrs = {}, {}
        for name, records in (("train_prompts", probe), ("held_out", held_records)):
            reward = sampled_reward(model, template, records, args.temperature, seed + 7,
                                    args.max_new_tokens)[2]
            rewards[name] = round(float(reward.mean()), 3)
            stderrs[name] = round(bootstrap_stderr(reward), 3) if len(reward) > 1 else None
        accuracy, accuracy_stderr = task_accuracy(model, template, held)
        return {"sampled_reward": rewards, "greedy_accuracy": accuracy,
                "sampled_reward_stderr": stderrs, "greedy_accuracy_stderr": accuracy_stderr}

    before = measure(policy)
    print(f"before RLHF: {before}")
    reinforce = Reinforce(policy, reference, kl_coef=args.kl_coef)
    group = args.group_size if args.group_size > 1 else None
    log = []

    def batch_fn(records, rng):
        """batch_size answers sampled from the policy now, group_size to a prompt, and their
        rewards (the sampling seed follows the step, so a rerun samples the same)."""
        prompts = rng.integers(0, len(records), train_config.batch_size // args.group_size)
        batch = [records[i] for i in prompts for _ in range(args.group_size)]
        return sampled_reward(policy, template, batch, args.temperature,
                              seed * 100003 + trainer.step, args.max_new_tokens)

    def loss_fn(policy, batch):
        loss, stats = reinforce.loss(*batch, group_size=group)
        log.append(stats)
        return loss

    trainer = Trainer(policy, train_config.adamw([p for p in policy.parameters()
                                                  if p.requires_grad]),
                      train, None, train_config, loss_fn=loss_fn, batch_fn=batch_fn)
    start = time.perf_counter()
    for step in range(train_config.max_iters):
        trainer.train_step()
        if step % 20 == 0 or step == train_config.max_iters - 1:
            recent = log[-20:]
            print(f"step {step}: reward {np.mean([s['mean_reward'] for s in recent]):.3f} kl "
                  f"{np.mean([s['kl'] for s in recent]):.3f}", flush=True)
    wall = time.perf_counter() - start
    policy.eval()
    after = measure(policy)
    print(f"after RLHF: {after}")
    path = os.path.join(train_config.out_dir, "ckpt.safetensors")
    save_checkpoint(path, policy, record={**record, "rlhf": {
        "steps": train_config.max_iters, "kl_coef": args.kl_coef,
        "group_size": args.group_size}})
    result = {"before": before, "after": after, "steps": train_config.max_iters,
              "kl_coef": args.kl_coef, "group_size": args.group_size,
              "final_kl": round(float(np.mean([s["kl"] for s in log[-20:]])), 4),
              "train_reward_first": round(float(np.mean([s["mean_reward"]
                                                         for s in log[:20]])), 3),
              "train_reward_last": round(float(np.mean([s["mean_reward"]
                                                        for s in log[-20:]])), 3),
              "train_s": round(wall, 1), "checkpoint": path}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
