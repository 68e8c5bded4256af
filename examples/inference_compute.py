"""Inference-time compute on a checkable task: sample many answers to small sums and choose among
them (pass@k, majority vote, best-of-N by a reward model and by log-likelihood), against spending
the same compute on more training.

    python examples/inference_compute.py                 # N up to 256, 200 problems
    python examples/inference_compute.py --quick=true    # N up to 32, 100 problems
    python examples/inference_compute.py --n_samples=64 --ks=1,8,64 --temperature=0.8

Reading order: Args; the task (finetune.tasks' arithmetic, "What is 17+25?" -> "42", split by
prompt as task_records splits it); the model (a small GPT trained here by SFT through the chat
template on byte-level tokens, until it is right about half the time); sampling
(generate.sample_n: each held-out prompt replicated N times, KV-cached, batched, temperature
sampling with a seed; a sample ends at <|end|>); the scorers (the model's own log-likelihood of
each sampled answer, a reward model trained here); the curves (pass@k, vote, best-of-N); the
training arm; the table, JSON, figure and JSON line.

1. Task and model: answer_is_correct checks an answer (exact match after stripping). A
   2-block GPT (120k parameters) learns the sums by SFT at a constant learning rate and stops
   once its greedy accuracy on validation sums (apart from the training and held-out ones)
   reaches target_accuracy (0.5): a model right on some samples and wrong on others, where
   sampling has something to choose from (trial runs went from 0.25 to 0.95 greedy accuracy
   within 100 steps: the sums are learnt suddenly). It answers each of `problems` held-out
   sums once greedily (the baseline) and N times by sampling.
2. pass@k (Chen et al., 2021): per problem, c of its N samples correct, the unbiased
   1 - C(N - c, k) / C(N, k) (generate.pass_at_k), averaged over problems, k = 1, 2, 4, ..., N.
   It needs the checker: an oracle's ceiling, not something a user without one can reach.
3. Majority vote (self-consistency, Wang et al., 2022) over the normalised answers (whitespace
   collapsed), ties to the answer seen first; best-of-N: the sample a scorer ranks first
   (generate.best_of_n), scored (a) by a reward model, SequenceHead(a copy of the SFT model)
   trained with the Bradley-Terry loss (the recipe of examples/reward_model.py) on
   finetune.preference_pairs of the training sums (the right sum against one off by 1-3) and
   on the model's own wrong answers to training sums against the right ones (sampled_pairs, as
   Cobbe et al., 2021 train a verifier on the generator's samples: the near misses alone
   taught it that 43 is not 42 while it ranked 52 first, the model's usual slip being the tens
   digit), and (b) by the model's own log-likelihood of the sampled answer (the sum of its
   tokens' log-probs, <|end|> included; the mean is in the JSON). Accuracy at n samples is
   averaged over the N // n disjoint blocks of n of each problem's samples (the first block is
   "the first n samples"; the others lower the variance of the same estimate).
4. Compute, counted as the brief of issue 28 counts it: 2 x params FLOPs per generated token for
   inference (tokens actually generated, through <|end|>) and 6 x params per trained token (a
   step trains batch_size x block_size packed tokens, padding included). The prompt's prefill
   is not counted (a cache shared across the N samples pays it once per problem, the same for
   every N); the log-likelihood is the sampler's own (free; recomputed here for convenience);
   the reward model's forward over each sampled conversation is charged to its curve. The
   reward model's own training is a one-off cost and is not charged.
5. Training arm: the SFT run continues (same optimizer, same constant learning rate) for as
   many extra FLOPs as answering every problem with n samples costs beyond answering it once,
   2 x params x (n - 1) x problems x mean tokens per sample; its greedy accuracy is measured at
   each n's matched step count (rounded to whole steps, the FLOPs actually trained reported).

Writes out_dir/inference_compute.json and inference_compute.png (left: accuracy against N;
right: accuracy against the FLOPs spent on the problem set, sampling and training), prints the
table and ends with one JSON line.

What the figures show at this scale: how pass@k, a vote and a learned or likelihood ranking
grow with N for a model that is right on some of its samples; the gap between pass@N (a perfect
checker) and the selections a user can make without one; where the vote stops gaining (it
converges to the model's most likely answer, right or wrong: more samples cannot fix a problem
whose modal answer is wrong); a learned reward model that checks the answer only partly
helping at small N and then choosing worse as N grows (it starts from the same half-trained
network, and checking a sum is about as hard as doing it: 2000 steps bring its held-out pair
accuracy to ~0.76-0.78, 300 left it near 0.5-0.6 and it only ever hurt; at 300 steps its top
picks among 256 samples were malformed answers, an empty one, a lone digit, a stray byte, which
its training pairs hardly held, and the more samples it ranks the likelier one is among them:
over-optimisation of a proxy reward, Gao et al., 2022); and what the same FLOPs buy as
training steps.

What they do NOT show: anything about large models or reasoning chains. An answer here is 3
tokens, so even 256 samples of 200 sums cost only about 50 training steps; a chain of thought
costs hundreds of tokens a sample and moves every sampling point to the right. The training arm
is matched to one pass over `problems` sums: training is paid once and amortised over every
later question, sampling on every question, so at deployment scale the comparison tilts further
towards training. The model stops in the steep part of its learning curve (sums are learnt
within a few hundred steps), where a step is worth the most; a model near the end of its curve
gains little from either, and a model with a different error pattern would vote differently.
One seed, one small model; a curve's noise is about sqrt(p (1 - p) / problems) (the stderr
keys), and a few training steps move greedy accuracy by several points either way.

What the default run gave (200 sums, N = 256, 44 s on 2 idle cores with OMP_NUM_THREADS=1;
SFT stopped at step 225): greedy 0.435, a single sample at temperature 1 right 0.231 of the
time. pass@k climbs 0.23, 0.39, 0.60, 0.79, 0.91, 0.97 at k = 1..32 and 0.99 at 256: nearly
every sum has a right answer among its samples. Without the checker little of that is
recovered: the vote reaches 0.39 at 32 and 0.425 at 256 (still creeping up, never above
greedy), best-of-N by log-likelihood 0.435 from N = 32 on (it finds the greedy answer: the
likeliest whole answer), best-of-N by the reward model (held-out pair accuracy 0.76) rises
0.23, 0.31, 0.36 at N = 1, 2, 4, above the vote, then falls 0.35, 0.29, 0.22 ... 0.10 at 256:
the over-optimisation curve. The compute of 256 samples of every sum buys 50 training steps,
and they lift greedy accuracy to 0.635; training beats every selection from N = 16 on (3
steps: 0.50, against the likelihood ranking's 0.434), which wins only at N = 4 and 8 (1 step,
which happened to cost 6 points: 0.37). The quick run (100 sums, N = 32, 31 s): greedy 0.52,
pass@32 0.98, vote 0.51, log-likelihood 0.55 (beating training's 1 step at N = 16), reward
model (pair accuracy 0.78) 0.30, 0.38, 0.41 at N = 1, 2, 4, then 0.38, 0.32, 0.25 at 32; 3
training steps 0.60. With 300 reward-model steps (an earlier default) its curve only fell,
0.30 to 0.04.
"""
import dataclasses
import json
import math
import os
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
import numpy as np  # noqa: E402

from tinygrad_llm import backend, no_grad  # noqa: E402
from tinygrad_llm.eval import bootstrap_stderr  # noqa: E402
from tinygrad_llm.finetune import (SequenceHead, SFTBatcher, bradley_terry_loss,  # noqa: E402
                                   preference_pairs, sequence_logprobs)
from tinygrad_llm.finetune.tasks import (answer_is_correct, arithmetic,  # noqa: E402
                                         split_by_prompt)
from tinygrad_llm.generate import (best_of_n, generate, majority_vote, pass_at_k,  # noqa: E402
                                   sample_n)
from tinygrad_llm.models import GPT, GPTConfig  # noqa: E402
from tinygrad_llm.tokenizers import BPETokenizer, ChatTemplate  # noqa: E402
from tinygrad_llm.tokenizers.chat import CHAT_SPECIAL_TOKENS  # noqa: E402
from tinygrad_llm.train import OptionError, TrainConfig, Trainer, parse_args, run_main  # noqa
from tinygrad_llm.train.report import print_table, save_figure, write_json  # noqa: E402


@dataclasses.dataclass
class Args:
    quick: bool = False            # N up to 32 and 100 problems (about a minute on 2 cores)
    out_dir: str = "out-inference-compute"   # inference_compute.json and .png
    device: str = "cpu"            # "cpu" or "cuda"
    n_samples: int = None          # N: samples per problem (none: 256; quick: 32)
    ks: str = None                 # pass@k's k, comma-separated (none: 1, 2, 4, ..., N)
    problems: int = None           # held-out sums answered (none: 200; quick: 100)
    per_task: int = 2000           # training sums (task_records' arithmetic split)
    temperature: float = 1.0       # the sampling temperature
    max_new_tokens: int = 6        # the longest answer (a sum is 1-2 digits and <|end|>)
    rows_per_batch: int = 1024     # sampled rows decoded together
    n_layer: int = 2               # the model's blocks
    n_embd: int = 64               # its width (head width 16)
    block_size: int = 64           # tokens per packed SFT block
    batch_size: int = 16           # SFT blocks (reward model: pairs) per step
    sft_iters: int = 1500          # the most SFT steps from scratch
    target_accuracy: float = 0.5   # SFT stops once validation greedy accuracy reaches this
    eval_every: int = 25           # SFT steps between those validation checks
    val_problems: int = 50         # validation sums (from the training side of the split)
    learning_rate: float = 2e-3    # SFT's learning rate (after warmup, constant)
    rm_iters: int = 2000           # reward-model steps
    rm_lr: float = 3e-4            # the reward model's backbone lr (its head: 10x)
    rm_prompts: int = 500          # training sums the model answers for the reward model's data
    rm_samples: int = 4            # answers sampled to each (0: near-miss pairs only)
    seed: int = 0                  # the split, initialisation, batches and samples


# ---- the task and the model ---------------------------------------------------------------
def arithmetic_split(args):
    """(training records, validation sums, held-out problems): task_records' arithmetic split
    (the same draws and split_by_prompt, without the play), then val_problems sums of distinct
    prompts set aside from the training side the same way."""
    records = arithmetic(2 * (args.per_task + args.problems + args.val_problems), seed=args.seed)
    try:
        train, held = split_by_prompt(records, args.problems, seed=args.seed)
    except ValueError as err:
        raise OptionError(f"--problems: {err}") from None
    try:
        train, val = split_by_prompt(train, args.val_problems, seed=args.seed + 1)
    except ValueError as err:
        raise OptionError(f"--val_problems: {err}") from None
    return train[:args.per_task], val, held


def byte_template():
    """The chat template over byte-level tokens (256 bytes and the chat's special tokens, no
    merges): every digit is its own token, as a small model learns sums best."""
    return ChatTemplate(BPETokenizer.train("", 256 + len(CHAT_SPECIAL_TOKENS),
                                           special_tokens=CHAT_SPECIAL_TOKENS))


def n_params(model):
    return int(sum(p.data.size for p in model.parameters()))


def prompts_of(template, problems):
    return [template.render([{"role": "user", "content": r["prompt"]}],
                            add_generation_prompt=True)[0] for r in problems]


def answer_of(template, tokens):
    """A sample's tokens -> its normalised answer (the text before <|end|>, whitespace
    collapsed)."""
    text = template.tokenizer.decode([int(t) for t in tokens if int(t) != template.end_id])
    return " ".join(text.split())


def greedy(model, template, problems, max_new_tokens):
    """(accuracy, (P,) correctness, mean tokens generated) of the greedy answers."""
    prompts = prompts_of(template, problems)
    out = generate(model, prompts, max_new_tokens, temperature=0.0,
                   stop_ids=[template.end_id])
    new = [o[len(p):] for p, o in zip(prompts, out)]
    right = np.array([answer_is_correct(r, answer_of(template, t))
                      for r, t in zip(problems, new)], dtype=float)
    return float(right.mean()), right, float(np.mean([len(t) for t in new]))


def train_sft(args, template, records, val):
    """A fresh GPT trained by SFT on `records` at a constant learning rate (after warmup) until
    its greedy accuracy on `val` reaches target_accuracy (checked every eval_every steps) or
    sft_iters steps are done. Returns (model, its Trainer, tokens per step, the last
    validation accuracy); the Trainer goes on stepping at the same rate (the training arm)."""
    tl.manual_seed(args.seed)
    config = GPTConfig.preset("gpt2", vocab_size=template.tokenizer.vocab_size,
                              block_size=args.block_size, n_layer=args.n_layer,
                              n_head=max(1, args.n_embd // 16), n_embd=args.n_embd, bias=False,
                              dropout=0.0)
    model = GPT(config).to(args.device)
    batcher = SFTBatcher(template, records, block_size=args.block_size)
    train_config = TrainConfig(
        batch_size=args.batch_size, block_size=args.block_size, max_iters=args.sft_iters,
        learning_rate=args.learning_rate, min_lr=args.learning_rate,      # constant
        warmup_iters=min(50, args.sft_iters // 10), weight_decay=0.0, beta2=0.99,
        grad_clip=1.0, seed=args.seed, out_dir=None, checkpoint=False, progress=False)

    def loss_fn(model, batch):
        inputs, kw = batcher.forward_kwargs(model, batch)
        return model(backend.to_device(inputs, model.device), **kw)[1]

    trainer = Trainer(model, train_config.adamw(list(model.parameters())), batcher, None,
                      train_config, loss_fn=loss_fn, log=None,
                      batch_fn=lambda data, rng: data.batch(args.batch_size, rng))
    losses, accuracy = [], 0.0
    while trainer.step < args.sft_iters:
        losses.append(trainer.train_step())
        if trainer.step % args.eval_every == 0 or trainer.step == args.sft_iters:
            accuracy = greedy(model, template, val, args.max_new_tokens)[0]
            print(f"SFT step {trainer.step}: loss {np.mean(losses[-args.eval_every:]):.4f}, "
                  f"validation greedy accuracy {accuracy:.3f}", flush=True)
            if accuracy >= args.target_accuracy:
                break
    model.eval()
    return model, trainer, args.batch_size * args.block_size, accuracy


# ---- the scorers ----------------------------------------------------------------------------
def right_padded(rows):
    """1-D id arrays -> ids (B, W) right-padded with 0 and lengths (B,)."""
    ids = np.zeros((len(rows), max(map(len, rows))), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids, np.array([len(r) for r in rows])


def loglik_scores(model, prompts, samples, batch=256):
    """Per problem, (sum, mean) of its samples' token log-probs under the model, two (N,)
    arrays: log p(answer tokens | prompt), computed once per distinct answer of a problem."""
    keys = sorted({(p, tuple(int(t) for t in s)) for p, ss in enumerate(samples) for s in ss})
    total = {}
    for start in range(0, len(keys), batch):
        chunk = keys[start:start + batch]
        ids, lengths = right_padded([np.concatenate([prompts[p], np.asarray(s, np.int64)])
                                     for p, s in chunk])
        starts = np.array([len(prompts[p]) for p, _ in chunk])
        columns = np.arange(ids.shape[1])[None, :]
        learn = (columns >= starts[:, None]) & (columns < lengths[:, None])   # the answers
        with no_grad():
            lp = backend.to_numpy(sequence_logprobs(model, ids, learn).data)
        total.update(zip(chunk, lp.tolist()))
    out = []
    for p, ss in enumerate(samples):
        s = np.array([total[(p, tuple(int(t) for t in x))] for x in ss])
        out.append((s, s / np.maximum(1, [len(x) for x in ss])))
    return out


def text_chat(template, prompt, answer):
    """A [user prompt, assistant answer] chat's ids, ending on the assistant's <|end|> (the
    token SequenceHead pools)."""
    return template.render([{"role": "user", "content": prompt},
                            {"role": "assistant", "content": answer}])[0]


def sample_chat(template, prompt_ids, tokens):
    """A sampled answer's chat: the prompt's ids, the tokens as sampled, and <|end|> if the
    sample ran out of tokens first (for an answer in words, text_chat's ids)."""
    tail = [] if len(tokens) and int(tokens[-1]) == template.end_id else [template.end_id]
    return np.concatenate([prompt_ids, tokens, tail]).astype(np.int64)


def reward_scores(rm, rows, batch=256):
    """r(x, y) (B,) of chats given as id arrays."""
    out = []
    for start in range(0, len(rows), batch):
        ids, lengths = right_padded(rows[start:start + batch])
        with no_grad():
            out.append(rm(backend.to_device(ids, rm.score.weight.device), lengths).numpy())
    return np.concatenate(out)


def pair_chats(template, pairs):
    """Preference pairs -> their chats, the chosen ones first, then the rejected ones."""
    return ([text_chat(template, p["prompt"], p["chosen"]) for p in pairs]
            + [text_chat(template, p["prompt"], p["rejected"]) for p in pairs])


def sampled_pairs(args, model, template, records):
    """(chosen, rejected) chats from the model's own mistakes: rm_samples answers sampled to
    each of the first rm_prompts training sums, each wrong one rejected against the right
    answer (Cobbe et al., 2021 train their verifier on the generator's own samples)."""
    records = records[:args.rm_prompts]
    prompts = prompts_of(template, records)
    samples = sample_n(model, prompts, args.rm_samples, args.max_new_tokens,
                       temperature=args.temperature, stop_ids=[template.end_id],
                       seed=args.seed + 2, rows_per_batch=args.rows_per_batch)
    return [(text_chat(template, r["prompt"], r["response"]), sample_chat(template, p, x))
            for r, p, ss in zip(records, prompts, samples) for x in ss
            if not answer_is_correct(r, answer_of(template, x))]


def train_reward_model(args, model, template, train, problems):
    """SequenceHead over a copy of the SFT model, trained with the Bradley-Terry loss on
    preference_pairs of the training sums (the right sum against one off by 1-3) and on the
    model's own wrong answers to them (sampled_pairs). Returns (reward model, {its pair
    accuracy on held-out near-miss pairs, its stderr, the pairs of each kind})."""
    copy = GPT(model.config).to(args.device)
    copy.load_state_dict(model.state_dict())
    rm = SequenceHead(copy, n_out=1)
    near = [(text_chat(template, p["prompt"], p["chosen"]),
             text_chat(template, p["prompt"], p["rejected"]))
            for p in preference_pairs(train, seed=args.seed)]
    own = sampled_pairs(args, model, template, train) if args.rm_samples else []
    pairs = near + own
    config = TrainConfig(batch_size=args.batch_size, max_iters=args.rm_iters,
                         learning_rate=args.rm_lr, min_lr=args.rm_lr / 10,
                         warmup_iters=max(1, args.rm_iters // 10), weight_decay=0.0,
                         beta2=0.999, grad_clip=1.0, seed=args.seed, out_dir=None,
                         checkpoint=False, progress=False)

    def loss_fn(rm, batch):
        ids, lengths = right_padded([c for c, _ in batch] + [r for _, r in batch])
        r = rm(backend.to_device(ids, args.device), lengths)        # (2B,): chosen, rejected
        return bradley_terry_loss(r[:len(batch)], r[len(batch):])[0]

    body = [p for p in copy.parameters()]
    optimizer = config.adamw([{"params": body}, {"params": list(rm.score.parameters())}])
    trainer = Trainer(rm, optimizer, pairs, None, config, loss_fn=loss_fn, log=None,
                      lr_scales=[1.0, 10.0],
                      batch_fn=lambda data, rng: [data[i] for i in rng.integers(
                          0, len(data), args.batch_size)])
    losses = [trainer.train_step() for _ in range(args.rm_iters)]
    print(f"reward model: {args.rm_iters} steps, loss {np.mean(losses[:10]):.4f} -> "
          f"{np.mean(losses[-10:]):.4f}", flush=True)
    rm.eval()
    held = preference_pairs(problems, seed=args.seed + 1)
    right = []
    for start in range(0, len(held), 256):
        chunk = held[start:start + 256]
        r = reward_scores(rm, pair_chats(template, chunk))
        m = r[:len(chunk)] - r[len(chunk):]
        right += ((m > 0) + 0.5 * (m == 0)).tolist()
    return rm, {"pair_accuracy": float(np.mean(right)),
                "pair_accuracy_stderr": bootstrap_stderr(np.array(right)),
                "near_miss_pairs": len(near), "own_mistake_pairs": len(own)}


# ---- the curves -----------------------------------------------------------------------------
def block_accuracy(answers, correct, n, choose):
    """Accuracy of choose(first, last) -> chosen answer over every problem's disjoint blocks of
    n samples (samples first..last - 1), averaged per problem then over problems; also the
    per-problem means (for a stderr)."""
    per_problem = []
    for p, a in enumerate(answers):
        blocks = [correct[p][choose(p, b * n, (b + 1) * n)] for b in range(len(a) // n)]
        per_problem.append(np.mean(blocks))
    return float(np.mean(per_problem)), np.array(per_problem)


def powers_of_two(n):
    return sorted({2 ** i for i in range(int(math.log2(n)) + 1)} | {n})


def _ks(args):
    if args.ks is None:
        return powers_of_two(args.n_samples)
    try:
        ks = sorted({int(k) for k in args.ks.split(",") if k.strip()})
    except ValueError:
        raise OptionError(f"--ks: expected comma-separated ints like '1,4,16', got "
                          f"{args.ks!r}") from None
    if not ks or ks[0] < 1:
        raise OptionError(f"--ks: expected ints >= 1, got {args.ks!r}")
    if ks[-1] > args.n_samples:
        raise OptionError(f"--ks: k={ks[-1]} exceeds N = --n_samples={args.n_samples}: pass@k "
                          f"draws k of the N samples")
    return ks


# ---- the figure -----------------------------------------------------------------------------
METHODS = (("pass_at_k", "pass@k (oracle checker)", "k--"),
           ("vote", "majority vote", "C0o-"),
           ("best_rm", "best-of-N, reward model", "C1s-"),
           ("best_loglik", "best-of-N, log-likelihood", "C2^-"))


def _draw(rows, greedy_accuracy, training, flops_per_token):
    def draw(plt):
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
        ns = [r["n"] for r in rows]
        for key, label, style in METHODS:
            left.plot(ns, [r[key] for r in rows], style, ms=4, label=label)
            x = [r["flops_rm" if key == "best_rm" else "flops"] for r in rows]
            right.plot(x, [r[key] for r in rows], style, ms=4, label=label)
        left.axhline(greedy_accuracy, color="grey", ls=":", label="greedy (N = 1)")
        left.set_xscale("log", base=2)
        left.set_xlabel("samples per problem N")
        left.set_ylabel("held-out accuracy")
        left.set_title("accuracy against samples")
        left.legend(fontsize=8)
        right.plot([t["flops"] for t in training], [t["greedy_accuracy"] for t in training],
                   "C3D-", ms=5, label="greedy after more training (matched)")
        right.set_xscale("log")
        right.set_xlabel("FLOPs spent on the problem set (answering + extra training)")
        top = right.secondary_xaxis("top", functions=(lambda f: f / flops_per_token,
                                                      lambda t: t * flops_per_token))
        top.set_xlabel("generated tokens per problem (sampling)")
        right.set_ylabel("held-out accuracy")
        right.set_title("sampling against training, at matched compute")
        right.legend(fontsize=8)
        fig.tight_layout()
    return draw


# ---- main -----------------------------------------------------------------------------------
def main(argv):
    (args,) = parse_args(argv, Args)
    for name, full, quick in (("n_samples", 256, 32), ("problems", 200, 100)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name, low in (("n_samples", 1), ("problems", 1), ("per_task", 1), ("sft_iters", 1),
                      ("eval_every", 1), ("val_problems", 1), ("rm_iters", 1),
                      ("rm_prompts", 1), ("rm_samples", 0), ("max_new_tokens", 1),
                      ("rows_per_batch", 1),
                      ("batch_size", 1), ("block_size", 16), ("n_layer", 1), ("n_embd", 16)):
        if getattr(args, name) < low:
            raise OptionError(f"--{name}: expected an int >= {low}, got {getattr(args, name)}"
                              + (" (an empty problem list)" if name == "problems" else ""))
    if not args.temperature > 0:
        raise OptionError(f"--temperature: sampling needs a temperature > 0, got "
                          f"{args.temperature}")
    ks = _ks(args)
    ns = powers_of_two(args.n_samples)
    wall, times = time.perf_counter(), {}

    # the task and the model
    train, val, problems = arithmetic_split(args)
    template = byte_template()
    start = time.perf_counter()
    model, trainer, tokens_per_step, val_accuracy = train_sft(args, template, train, val)
    params = n_params(model)
    times["sft_s"] = time.perf_counter() - start
    greedy_accuracy, greedy_right, greedy_tokens = greedy(model, template, problems,
                                                          args.max_new_tokens)
    print(f"{params:,} parameters; greedy accuracy on {len(problems)} held-out sums: "
          f"{greedy_accuracy:.3f}", flush=True)

    # sampling: N answers to each problem
    start = time.perf_counter()
    prompts = prompts_of(template, problems)
    samples = sample_n(model, prompts, args.n_samples, args.max_new_tokens,
                       temperature=args.temperature, stop_ids=[template.end_id],
                       seed=args.seed, rows_per_batch=args.rows_per_batch)
    answers = [[answer_of(template, s) for s in ss] for ss in samples]
    correct = [{a: answer_is_correct(r, a) for a in set(aa)} for r, aa in zip(problems, answers)]
    c = np.array([sum(correct[p][a] for a in aa) for p, aa in enumerate(answers)])
    tokens = np.array([[len(s) for s in ss] for ss in samples])          # (P, N) generated
    times["sample_s"] = time.perf_counter() - start
    print(f"sampled {tokens.size:,} answers ({tokens.sum():,} tokens) in "
          f"{times['sample_s']:.1f}s; sample accuracy {c.sum() / tokens.size:.3f}", flush=True)

    # the scorers
    start = time.perf_counter()
    loglik = loglik_scores(model, prompts, samples)
    rm, rm_report = train_reward_model(args, model, template, train, problems)
    chats = {(p, tuple(int(t) for t in x)): sample_chat(template, prompts[p], x)
             for p, ss in enumerate(samples) for x in ss}           # each distinct sample once
    scored = dict(zip(chats, reward_scores(rm, list(chats.values()))))
    rm_score = [np.array([scored[(p, tuple(int(t) for t in x))] for x in ss])
                for p, ss in enumerate(samples)]
    rm_params = n_params(rm)
    # the reward model reads each sampled chat whole (charged per sample, repeats included)
    chat_tokens = float(np.mean([len(prompts[p]) + len(x) + (int(x[-1]) != template.end_id)
                                 for p, ss in enumerate(samples) for x in ss]))
    times["score_s"] = time.perf_counter() - start
    print(f"reward model: {rm_report['near_miss_pairs']} near-miss and "
          f"{rm_report['own_mistake_pairs']} own-mistake pairs; held-out near-miss pair "
          f"accuracy {rm_report['pair_accuracy']:.3f}", flush=True)

    # the curves
    pass_k = {k: float(np.mean([pass_at_k(args.n_samples, int(ci), k) for ci in c])) for k in ks}
    rows, n_problems, mean_tokens = [], len(problems), float(tokens.mean())
    choosers = {
        "vote": lambda p, i, j: majority_vote(answers[p][i:j]),
        "best_rm": lambda p, i, j: best_of_n(rm_score[p][i:j], answers[p][i:j]),
        "best_loglik": lambda p, i, j: best_of_n(loglik[p][0][i:j], answers[p][i:j]),
        "best_loglik_mean": lambda p, i, j: best_of_n(loglik[p][1][i:j], answers[p][i:j])}
    for n in ns:
        row = {"n": n, "tokens_per_problem": n * mean_tokens,
               "flops": 2.0 * params * n_problems * n * mean_tokens,
               "flops_rm": 2.0 * n_problems * n * (params * mean_tokens + rm_params * chat_tokens),
               "pass_at_k": float(np.mean([pass_at_k(args.n_samples, int(ci), n) for ci in c]))}
        for key, choose in choosers.items():
            row[key], per_problem = block_accuracy(answers, correct, n, choose)
            row[key + "_stderr"] = bootstrap_stderr(per_problem) if n_problems > 1 else None
        rows.append(row)

    # the training arm: more SFT steps at matched compute
    start = time.perf_counter()
    step_flops = 6.0 * params * tokens_per_step
    base_step = trainer.step
    training = []
    for row in rows:
        extra = row["flops"] - rows[0]["flops"]          # beyond answering once
        target = base_step + int(round(extra / step_flops))
        while trainer.step < target:
            trainer.train_step()
        model.eval()
        accuracy = greedy(model, template, problems, args.max_new_tokens)[0]
        trained = trainer.step - base_step
        training.append({"n": row["n"], "matched_flops": extra, "steps": trained,
                         "train_flops": trained * step_flops, "greedy_accuracy": accuracy,
                         "flops": trained * step_flops
                         + 2.0 * params * n_problems * greedy_tokens})
        row.update(train_steps=trained, train_greedy=accuracy)
    times["train_arm_s"] = time.perf_counter() - start

    # findings
    # the vote saturates at the first n that every larger n measured beats by at most 0.01
    # (None: still gaining at the largest n, or only one n measured)
    saturates = next((r["n"] for i, r in enumerate(rows[:-1])
                      if max(q["vote"] for q in rows[i:]) - r["vote"] <= 0.01), None)
    beats = {key: [r["n"] for r in rows if r["n"] > 1 and r[key] > r["train_greedy"]]
             for key in ("vote", "best_rm", "best_loglik")}
    print_table(rows, columns=["n", "tokens_per_problem", "flops", "pass_at_k", "vote",
                               "best_rm", "best_loglik", "best_loglik_mean", "train_steps",
                               "train_greedy"],
                title=f"held-out accuracy of {n_problems} sums against samples per problem n "
                      f"(pass_at_k: k = n; vote and best-of-n over disjoint blocks of n of "
                      f"{args.n_samples}); train: greedy after train_steps more SFT steps of "
                      f"matched FLOPs")
    print_table([{"k": k, "pass_at_k": v} for k, v in pass_k.items()],
                title=f"unbiased pass@k from N = {args.n_samples} samples")
    print(f"greedy {greedy_accuracy:.3f}; "
          + (f"vote saturates at n = {saturates} (no larger n gains more than 0.01)"
             if saturates else f"vote still gaining at n = {rows[-1]['n']}")
          + f"; pass@N - vote@N = "
          f"{rows[-1]['pass_at_k'] - rows[-1]['vote']:.3f} (what a perfect checker adds); "
          f"sampling beats training at matched compute for n in {beats}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))

    png = save_figure(os.path.join(args.out_dir, "inference_compute.png"),
                      _draw(rows, greedy_accuracy, training, 2.0 * params * n_problems))
    wall = time.perf_counter() - wall
    last = rows[-1]
    path = write_json(os.path.join(args.out_dir, "inference_compute.json"), {
        "args": dataclasses.asdict(args), "params": params, "problems": n_problems,
        "train_records": len(train), "greedy_accuracy": greedy_accuracy,
        "greedy_accuracy_stderr": bootstrap_stderr(greedy_right) if n_problems > 1 else None,
        "greedy_tokens_per_problem": greedy_tokens, "sample_accuracy": float(c.sum()
                                                                             / tokens.size),
        "tokens_per_sample": mean_tokens, "chat_tokens_per_sample": float(chat_tokens),
        "correct_per_problem": c, "pass_at_k": pass_k, "curves": rows, "training": training,
        "reward_model": rm_report,
        "vote_saturates_at": saturates, "sampling_beats_training_at": beats,
        "sft_steps": base_step, "validation_accuracy": val_accuracy,
        "train_flops_per_step": step_flops, "sft_flops": step_flops * base_step,
        "times": times, "png": png, "wall_s": wall})
    result = {"greedy_accuracy": round(greedy_accuracy, 4),
              "pass_at_1": round(pass_k.get(1, rows[0]["pass_at_k"]), 4),
              "pass_at_n": round(last["pass_at_k"], 4), "vote_at_n": round(last["vote"], 4),
              "best_rm_at_n": round(last["best_rm"], 4),
              "best_loglik_at_n": round(last["best_loglik"], 4),
              "train_at_n": round(last["train_greedy"], 4), "train_steps_at_n":
              last["train_steps"], "vote_saturates_at": saturates,
              "sampling_beats_training_at": beats,
              "reward_model_pair_accuracy": round(rm_report["pair_accuracy"], 4),
              "n_samples": args.n_samples, "problems": n_problems, "params": params,
              "sft_steps": base_step,
              "tokens_per_sample": round(mean_tokens, 3), "wall_s": round(wall, 1),
              "json": path}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
