"""Direct preference optimisation of the SFT model, and the preferred behaviour's rate before and
after.

    python examples/dpo.py                  # runs finetune_sft.py first if out-sft/ is missing
    python examples/dpo.py --beta=0.1 --max_iters=150

Pairs come from finetune/tasks.py. With --behaviour=courtesy (the default) the preferred
behaviour is a style the SFT data never showed: the chosen answer ends with ", my lord", the
rejected one is the same answer without it; the rate reported is how often the model's own
greedy answers to held-out prompts end that way. With --behaviour=correct, the chosen answer is
the right one and the rejected a plausible wrong one (a sum off by a little, the word not
reversed, another speaker). The policy starts as the SFT model; a frozen copy is the reference.
Each step of the Trainer (a constant learning rate) takes a batch of pairs and minimises
-log sigmoid(beta [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])
(finetune/dpo.py), logging the implicit rewards' accuracy and margin. Reported before and after
on held-out prompts, each figure by the evaluation harness (tinygrad_llm.eval) with its bootstrap
standard error (the "_stderr" keys): the behaviour's rate (the chat tasks' courtesy metric, or
with --behaviour=correct their mean exact match), the preference rate (preference_task's acc: how
often the policy gives the chosen answer the higher log-probability) and each task's greedy
exact-match accuracy. One JSON line at the end.

DPO only asks that y_w gain on y_l; both may lose probability together, and the answers' content
drifts (task accuracy falls). --sft_coef=c adds c times the chosen answers' mean negative
log-likelihood per token to the loss (as in Pang et al., 2024, iterative reasoning preference
optimisation), which keeps the chosen answers likely while their style is learned.
"""
import dataclasses
import json
import os
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
import numpy as np  # noqa: E402

from tinygrad_llm import no_grad  # noqa: E402
from tinygrad_llm.eval import (by_task, chat_tasks, evaluate, preference_task,  # noqa: E402
                               task_mean)
from tinygrad_llm.finetune import (COURTESY, alignment_setup, dpo_loss,  # noqa: E402
                                   encode_pairs, preference_pairs, sequence_logprobs)
from tinygrad_llm.train import (TrainConfig, Trainer, load_model, parse_args,  # noqa: E402
                                run_main, save_checkpoint)

SFT = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune_sft.py")]   # makes it


@dataclasses.dataclass
class DPOArgs:
    sft: str = "out-sft/ckpt.safetensors"   # the policy's start, and the frozen reference
    beta: float = 0.1               # how far from the reference the policy may move
    per_task: int = 2000            # training records per task (as finetune_sft.py splits them)
    held_out: int = 60              # held-out prompts per task
    behaviour: str = "courtesy"     # the preferred answer: "courtesy" (", my lord") or "correct"
    sft_coef: float = 0.5           # weight of the chosen answers' NLL added to the DPO loss


# a constant learning rate: min_lr = learning_rate, no warmup
TRAIN_DEFAULTS = dict(max_iters=150, batch_size=16, learning_rate=5e-5, min_lr=5e-5,
                      warmup_iters=0, weight_decay=0.0, beta2=0.999, grad_clip=1.0, seed=0,
                      out_dir="out-dpo")


def make_pairs(records, behaviour, seed):
    if behaviour == "correct":
        return preference_pairs(records, seed=seed)
    if behaviour != "courtesy":
        raise ValueError(f"--behaviour must be 'courtesy' or 'correct', got {behaviour!r}")
    return [{"prompt": r["prompt"], "chosen": r["response"] + COURTESY,
             "rejected": r["response"], "task": r["task"]} for r in records]


def measure(model, template, held, held_pairs, behaviour):
    """The behaviour's rate, the preference rate and each task's accuracy, with their stderrs,
    from one harness run: one greedy answer to every held-out prompt, the pairs as two-way
    multiple choice."""
    report = evaluate(model, template.tokenizer,
                      [*chat_tasks(template, held), preference_task(template, held_pairs)],
                      batch_size=64)             # prompts decoded together
    # courtesy: how often the answers end ", my lord" (equal-sized tasks: the mean over all)
    rate, rate_stderr = task_mean(report, "exact_match" if behaviour == "correct" else "courtesy")
    accuracy, accuracy_stderr = by_task(report, "exact_match")
    preference, preference_stderr = by_task(report, "acc")       # the preference task's alone
    return {"behaviour_rate": rate, "preference_rate": preference["preference"],
            "accuracy": accuracy, "behaviour_rate_stderr": rate_stderr,
            "preference_rate_stderr": preference_stderr["preference"],
            "accuracy_stderr": accuracy_stderr}


def main(argv):
    args, train_config = parse_args(argv, DPOArgs, TrainConfig,
                                    defaults={TrainConfig: TRAIN_DEFAULTS})
    policy, template, record, train, held = alignment_setup(
        args.sft, args.per_task, args.held_out, train_config.seed, make=SFT)
    reference, _, _ = load_model(args.sft)
    train_pairs = make_pairs(train, args.behaviour, train_config.seed)
    held_records = [r for records in held.values() for r in records]
    held_pairs = make_pairs(held_records, args.behaviour, train_config.seed + 1)
    before = measure(policy, template, held, held_pairs, args.behaviour)
    print(f"before DPO: {before}")

    def batch_fn(pairs, rng):
        return encode_pairs(template, [pairs[i] for i in
                                       rng.integers(0, len(pairs), train_config.batch_size)])

    latest = {}                     # the last batch's statistics (reward accuracy, margin, ...)

    def loss_fn(policy, enc):
        with no_grad():
            ref_c = sequence_logprobs(reference, *enc["chosen"]).numpy()
            ref_r = sequence_logprobs(reference, *enc["rejected"]).numpy()
        chosen = sequence_logprobs(policy, *enc["chosen"])
        loss, stats = dpo_loss(chosen, sequence_logprobs(policy, *enc["rejected"]), ref_c, ref_r,
                               beta=args.beta)
        if args.sft_coef:
            answer_tokens = int(enc["chosen"][1][:, 1:].sum())
            loss = loss - chosen.sum() * (args.sft_coef / answer_tokens)
        latest.update(stats)
        return loss

    optimizer = train_config.adamw([p for p in policy.parameters() if p.requires_grad])
    trainer = Trainer(policy, optimizer, train_pairs, None, train_config, loss_fn=loss_fn,
                      batch_fn=batch_fn)
    start, log = time.perf_counter(), []
    for step in range(train_config.max_iters):
        log.append({"loss": trainer.train_step(), **latest})
        if step % 25 == 0 or step == train_config.max_iters - 1:
            recent = log[-25:]
            print(f"step {step}: loss {np.mean([r['loss'] for r in recent]):.4f} reward accuracy "
                  f"{np.mean([r['reward_accuracy'] for r in recent]):.3f} margin "
                  f"{np.mean([r['reward_margin'] for r in recent]):.3f}", flush=True)
    wall = time.perf_counter() - start
    policy.eval()
    after = measure(policy, template, held, held_pairs, args.behaviour)
    print(f"after DPO: {after}")
    path = os.path.join(train_config.out_dir, "ckpt.safetensors")
    save_checkpoint(path, policy, record={**record, "dpo": {"steps": train_config.max_iters,
                                                            "beta": args.beta,
                                                            "sft_coef": args.sft_coef}})
    result = {"behaviour": args.behaviour, "before": before, "after": after,
              "steps": train_config.max_iters, "beta": args.beta, "sft_coef": args.sft_coef,
              "final_loss": round(float(np.mean([r["loss"] for r in log[-20:]])), 4),
              "final_reward_accuracy": round(float(np.mean(
                  [r["reward_accuracy"] for r in log[-20:]])), 3),
              "train_s": round(wall, 1), "checkpoint": path}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
