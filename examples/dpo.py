"""Direct preference optimisation of the SFT model, and the preferred behaviour's rate before and
after.

    python examples/dpo.py                  # runs finetune_sft.py first if out-sft/ is missing
    python examples/dpo.py --beta=0.1 --steps=150

Pairs come from finetune/tasks.py. With --behaviour=courtesy (the default) the preferred
behaviour is a style the SFT data never showed: the chosen answer ends with ", my lord", the
rejected one is the same answer without it; the rate reported is how often the model's own
greedy answers to held-out prompts end that way. With --behaviour=correct, the chosen answer is
the right one and the rejected a plausible wrong one (a sum off by a little, the word not
reversed, another speaker). The policy starts as the SFT model; a frozen copy is the reference.
Each step takes a batch of pairs and minimises
-log sigmoid(beta [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])
(finetune/dpo.py), logging the implicit rewards' accuracy and margin. Reported before and after
on held-out prompts: the behaviour's rate, the preference rate (how often the policy gives the
chosen answer the higher log-probability) and each task's greedy exact-match accuracy. One JSON
line at the end.

DPO only asks that y_w gain on y_l; both may lose probability together, and the answers' content
drifts (task accuracy falls). --sft_coef=c adds c times the chosen answers' mean negative
log-likelihood per token to the loss (as in Pang et al., 2024, iterative reasoning preference
optimisation), which keeps the chosen answers likely while their style is learned.
"""
import dataclasses
import json
import os
import sys
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
import numpy as np  # noqa: E402

from tinygrad_llm import no_grad  # noqa: E402
from tinygrad_llm.finetune import dpo_loss, sequence_logprobs  # noqa: E402
from tinygrad_llm.finetune.tasks import answer_is_correct, preference_pairs  # noqa: E402
from tinygrad_llm.optim import AdamW, clip_grad_norm_  # noqa: E402
from tinygrad_llm.train import (parse_overrides, save_checkpoint,  # noqa: E402
                                split_overrides)
from tinygrad_llm.train import run_main  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finetune_sft  # noqa: E402


@dataclasses.dataclass
class DPOArgs:
    sft: str = "out-sft/ckpt.safetensors"
    out: str = "out-dpo/ckpt.safetensors"
    steps: int = 150
    batch_size: int = 16
    learning_rate: float = 5e-5
    beta: float = 0.1
    per_task: int = 2000
    held_out: int = 60
    behaviour: str = "courtesy"     # or "correct"
    sft_coef: float = 0.5           # weight of the chosen answers' NLL added to the DPO loss
    seed: int = 0


SUFFIX = ", my lord"


def make_pairs(records, behaviour, seed):
    if behaviour == "correct":
        return preference_pairs(records, seed=seed)
    if behaviour != "courtesy":
        raise ValueError(f"--behaviour must be 'courtesy' or 'correct', got {behaviour!r}")
    return [{"prompt": r["prompt"], "chosen": r["response"] + SUFFIX,
             "rejected": r["response"], "task": r["task"]} for r in records]


def judge(model, template, held, behaviour="courtesy"):
    """One greedy answer to every held-out prompt -> (behaviour rate, {task: accuracy}).

    accuracy: each task's exact-match rate, the courtesy suffix set aside (it is the style being
    taught, not part of the answer); behaviour rate: how often the answers end with the suffix,
    or (behaviour "correct") the mean of the tasks' accuracies."""
    records = [r for rs in held.values() for r in rs]
    got = [a.strip() for a in finetune_sft.answers(model, template, records, max_new_tokens=16)]
    right = np.array([answer_is_correct(r, a.removesuffix(SUFFIX))
                      for r, a in zip(records, got)], dtype=float)
    ends = np.cumsum([len(rs) for rs in held.values()])
    per_task = [part.mean() for part in np.split(right, ends[:-1])]
    rate = np.mean(per_task) if behaviour == "correct" else np.mean(
        [a.endswith(SUFFIX) for a in got])
    return float(rate), {name: round(float(a), 3) for name, a in zip(held, per_task)}


def encode_pairs(template, pairs):
    """Chosen and rejected conversations as right-padded (ids, learn) arrays, row i of each the
    same prompt."""
    rows = {"chosen": [], "rejected": []}
    for p in pairs:
        for side in rows:
            rows[side].append(template.render([{"role": "user", "content": p["prompt"]},
                                               {"role": "assistant", "content": p[side]}]))
    out = {}
    for side, rendered in rows.items():
        width = max(len(ids) for ids, _ in rendered)
        ids = np.zeros((len(rendered), width), np.int64)
        learn = np.zeros((len(rendered), width), bool)
        for i, (x, m) in enumerate(rendered):
            ids[i, :len(x)], learn[i, :len(x)] = x, m
        out[side] = (ids, learn)
    return out


def preference_rate(model, encoded):
    with no_grad():
        chosen = sequence_logprobs(model, *encoded["chosen"]).numpy()
        rejected = sequence_logprobs(model, *encoded["rejected"]).numpy()
    return float((chosen > rejected).mean())


def main(argv):
    (kw,) = split_overrides(parse_overrides(argv), DPOArgs)
    args = DPOArgs(**kw)
    policy, reference, record, template, train, held = finetune_sft.alignment_setup(
        args.sft, args.per_task, args.held_out, args.seed)
    train_pairs = make_pairs(train, args.behaviour, args.seed)
    held_records = [r for records in held.values() for r in records]
    held_encoded = encode_pairs(template, make_pairs(held_records, args.behaviour, args.seed + 1))
    rate, accuracy = judge(policy, template, held, args.behaviour)
    before = {"behaviour_rate": rate, "preference_rate": preference_rate(policy, held_encoded),
              "accuracy": accuracy}
    print(f"before DPO: {before}")

    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = AdamW(params, lr=args.learning_rate, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    policy.train()
    start, log = time.perf_counter(), []
    for step in range(args.steps):
        batch = [train_pairs[i] for i in rng.integers(0, len(train_pairs), args.batch_size)]
        enc = encode_pairs(template, batch)
        with no_grad():
            ref_c = sequence_logprobs(reference, *enc["chosen"]).numpy()
            ref_r = sequence_logprobs(reference, *enc["rejected"]).numpy()
        chosen = sequence_logprobs(policy, *enc["chosen"])
        loss, stats = dpo_loss(chosen, sequence_logprobs(policy, *enc["rejected"]), ref_c, ref_r,
                               beta=args.beta)
        if args.sft_coef:
            answer_tokens = int(enc["chosen"][1][:, 1:].sum())
            loss = loss - chosen.sum() * (args.sft_coef / answer_tokens)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(params, 1.0)
        optimizer.step()
        log.append({"loss": float(loss.numpy()), **stats})
        if step % 25 == 0 or step == args.steps - 1:
            recent = log[-25:]
            print(f"step {step}: loss {np.mean([r['loss'] for r in recent]):.4f} reward accuracy "
                  f"{np.mean([r['reward_accuracy'] for r in recent]):.3f} margin "
                  f"{np.mean([r['reward_margin'] for r in recent]):.3f}", flush=True)
    wall = time.perf_counter() - start
    policy.eval()
    rate, accuracy = judge(policy, template, held, args.behaviour)
    after = {"behaviour_rate": rate, "preference_rate": preference_rate(policy, held_encoded),
             "accuracy": accuracy}
    print(f"after DPO: {after}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    save_checkpoint(args.out, policy, record={**record, "dpo": {"steps": args.steps,
                                                                "beta": args.beta,
                                                                "sft_coef": args.sft_coef}})
    result = {"behaviour": args.behaviour, "before": before, "after": after,
              "steps": args.steps, "beta": args.beta, "sft_coef": args.sft_coef,
              "final_loss": round(float(np.mean([r["loss"] for r in log[-20:]])), 4),
              "final_reward_accuracy": round(float(np.mean(
                  [r["reward_accuracy"] for r in log[-20:]])), 3),
              "train_s": round(wall, 1), "checkpoint": args.out}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
