"""Sequence classification: fine-tune a pretrained backbone with a small classification head to
say which of Shakespeare's most talkative characters speaks a passage, and measure what the
pretraining is worth.

    python examples/classify.py              # trains out-shakespeare/ and out-mlm/ if missing
    python examples/classify.py --backbones=encoder --max_iters=300 --classes=6

The task: the k (`classes`) speakers with the most lines in tiny Shakespeare (GLOUCESTER, DUKE
VINCENTIO, KING RICHARD II, LEONTES for k = 4); an example is `lines` consecutive lines of one of
their speeches, the label its speaker (read from the play's "NAME:" headings, so it is exact).
Why this task: the label is exact and needs no annotation, the classes are balanced (21-30%
each), and it is learnable but not trivial. Two lines (~85 characters) carry a character's words
and themes (the four come from four plays): a bag-of-words naive Bayes reaches ~0.55 on held-out
speeches, against ~0.25-0.35 for always naming the commonest speaker. Whole speeches are held
out (never a neighbour of a training passage), so held-out accuracy is not memorised context.

Backbones, each under finetune.SequenceHead(backbone, n_out=k):
  gpt      the main job's character-level GPT (out-shakespeare/, train_shakespeare.py): pools the
           hidden state at the newline ending the passage, the one position that has read it all;
  encoder  the MLM-pretrained WordPiece Encoder (train_mlm.py, out-mlm/): pools [CLS].
Training (the Trainer) minimises the cross-entropy of softmax(W h_pool + b) against the speaker,
all weights updated, the backbone with a small learning rate (`learning_rate`, so pretraining is
adjusted rather than overwritten: Howard & Ruder, 2018) and the new head with a larger one
(`head_lr`), both with warmup and cosine decay. Reported on held-out passages for each backbone:
accuracy with the untrained head (before), after `max_iters` steps, and after the same steps from
a randomly initialised backbone of the same shape (`scratch`), beside the majority-class
baseline. Each accuracy is the head's (a new classifier, not the language model), with its
bootstrap standard error over the held-out passages (eval.bootstrap_stderr: `*_stderr`).

Against it, the GPT's own zero-shot answer, asked through the evaluation harness before any
fine-tuning (`zero_shot`, on `zero_shot_docs` of the held-out passages drawn at random, so that it
stays cheap): each passage scored by eval.loglikelihood after each speaker's heading as the play
sets it (a blank line, then "LEONTES:" on its own line), the answer the speaker under whom it is
likeliest, argmax_s log p(passage | s): the noisy-channel form of zero-shot classification (Min
et al., 2022). The harness's who_speaks form ("Context: ... Question: Who speaks this line?
Answer:" with the names as choices) would ask a model that has only read plays a format it never
saw, and so measure the format as much as what the model knows about the speakers. The channel
form asks in the play's own terms, and every choice scores the same continuation, so no length
normalisation is needed.
The head's gain over `zero_shot.acc` is what the labels taught beyond what pretraining already
knew. Both read text the backbone saw in pretraining (the passages come from the whole play), so
neither is a held-out figure for the language model, only for the classification. The Encoder is
not a causal language model and has no zero-shot figure. One JSON line.
"""
import dataclasses
import json
import os
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
import numpy as np  # noqa: E402

from tinygrad_llm import no_grad  # noqa: E402
from tinygrad_llm.data import shakespeare  # noqa: E402
from tinygrad_llm.eval import bootstrap_stderr, loglikelihood  # noqa: E402
from tinygrad_llm.finetune import SequenceHead  # noqa: E402
from tinygrad_llm.finetune.tasks import speeches  # noqa: E402
from tinygrad_llm.models import GPT, Encoder, GPTConfig  # noqa: E402
from tinygrad_llm.nn import functional as F  # noqa: E402
from tinygrad_llm.train import (CheckpointError, OptionError, TrainConfig,  # noqa: E402
                                Trainer, ensure_checkpoint, load_model, parse_args, run_main)

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass
class ClassifyArgs:
    backbones: str = "gpt,encoder"                     # which to fine-tune, comma-separated
    gpt: str = "out-shakespeare/ckpt.safetensors"      # the GPT (trained if missing)
    gpt_iters: int = 2000          # when the GPT must be trained (train_shakespeare.py)
    encoder: str = "out-mlm/ckpt.safetensors"          # the Encoder (trained if missing)
    mlm_iters: int = 1500          # when the Encoder must be trained (train_mlm.py)
    classes: int = 4               # k: the k speakers with the most lines
    lines: int = 2                 # consecutive lines of a speech per example
    held_out: float = 0.2          # fraction of the speeches held out
    head_lr: float = 2e-3          # the new head's peak lr (the backbone's: learning_rate)
    scratch: bool = True           # also train the same head on a random backbone
    zero_shot_docs: int = 48       # held-out passages the GPT is asked zero-shot (0: none)


# the backbone's peak learning_rate; min_lr a tenth of each group's peak
TRAIN_DEFAULTS = dict(max_iters=150, batch_size=16, learning_rate=2e-4, min_lr=2e-5,
                      warmup_iters=15, weight_decay=0.0, beta2=0.999, grad_clip=1.0, seed=0)


# ---- the task --------------------------------------------------------------------------------
def speaker_passages(text, k, lines):
    """(passages, labels, speech ids, names): `lines` consecutive lines of the speeches of the k
    speakers with the most lines; labels index `names` (most lines first)."""
    runs, last = [], None              # consecutive lines of one speaker: one speech
    for speaker, line in speeches(text):
        if speaker != last:
            runs.append((speaker, []))
            last = speaker
        runs[-1][1].append(line)
    counts = {}
    for speaker, body in runs:
        counts[speaker] = counts.get(speaker, 0) + len(body)
    names = sorted(counts, key=lambda s: (-counts[s], s))[:k]
    if len(names) < k:
        raise OptionError(f"--classes={k}: the text has only {len(names)} speakers")
    passages, labels, speech = [], [], []
    for i, (speaker, body) in enumerate(runs):
        if speaker in names:
            for j in range(0, len(body), lines):
                passages.append("\n".join(body[j:j + lines]))
                labels.append(names.index(speaker))
                speech.append(i)
    return passages, np.array(labels), np.array(speech), names


def split_by_speech(speech, held_out, seed):
    """Boolean mask of the held-out examples: a random `held_out` fraction of the speeches."""
    ids = np.unique(speech)
    n = max(1, round(len(ids) * held_out))
    held = np.random.default_rng(seed).permutation(ids)[:n]
    return np.isin(speech, held)


# ---- backbones -------------------------------------------------------------------------------
def load_encoder(path):
    """(Encoder in eval mode, tokenizer, record) from train_mlm.py's checkpoint (its record's
    "architecture" is "encoder", which train.load_model builds)."""
    model, tokenizer, record = load_model(path)
    if not isinstance(model, Encoder):
        raise CheckpointError(f"{path}: not an Encoder checkpoint (record 'architecture' is "
                              f"{record.get('architecture')!r}, expected 'encoder')")
    return model, tokenizer, record


def ensure_backbones(args, kinds):
    """Train a missing backbone with the example that teaches it."""
    if "gpt" in kinds:
        ensure_checkpoint(args.gpt, [os.path.join(HERE, "train_shakespeare.py"),
                                     f"--max_iters={args.gpt_iters}", "--sample_tokens=0",
                                     "--progress=false"])
    if "encoder" in kinds:
        ensure_checkpoint(args.encoder, [os.path.join(HERE, "train_mlm.py"),
                                         f"--max_iters={args.mlm_iters}"])


def load_backbone(kind, args, seed):
    """(pretrained backbone, a random one of the same shape, tokenizer)."""
    model, tokenizer, record = load_model(args.gpt) if kind == "gpt" else \
        load_encoder(args.encoder)
    tl.manual_seed(seed)
    fresh = (GPT if kind == "gpt" else Encoder)(GPTConfig(**record["model_config"]))
    return model, fresh, tokenizer


def encode(kind, tokenizer, passages, block_size):
    """Right-padded ids (N, T) and lengths (N,): characters for the GPT; [CLS] pieces [SEP] for
    the Encoder. A passage longer than block_size keeps its end for the GPT (the pooled last
    token), its start for the Encoder (the pooled [CLS])."""
    if kind == "gpt":      # ending on the newline, as a passage's last line does in the play
        rows = [list(tokenizer.encode(p + "\n"))[-block_size:] for p in passages]
    else:
        rows = [[tokenizer.cls_id] + tokenizer.encode(p)[:block_size - 2] + [tokenizer.sep_id]
                for p in passages]
    pad = 0 if kind == "gpt" else tokenizer.pad_id
    lengths = np.array([len(r) for r in rows])
    ids = np.full((len(rows), lengths.max()), pad, np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids, lengths


# ---- training and evaluation -----------------------------------------------------------------
def correct(head, ids, lengths, labels, batch_size=64):
    """(N,) floats: 1 where the head names the passage's speaker, 0 elsewhere."""
    head.eval()
    hits = []
    with no_grad():
        for s in range(0, len(ids), batch_size):
            n = lengths[s:s + batch_size]
            logits = head(ids[s:s + batch_size, :n.max()], n).numpy()
            hits.append(logits.argmax(-1) == labels[s:s + batch_size])
    return np.concatenate(hits).astype(np.float64)


def with_stderr(name, per_passage, seed):
    """{name: mean, name_stderr: its bootstrap standard error over the passages}, rounded."""
    return {name: round(float(per_passage.mean()), 3),
            f"{name}_stderr": round(bootstrap_stderr(per_passage, np.mean, seed=seed), 3)}


def heading(name):
    """A speech's opening as the play sets it: a blank line, then "NAME:" on its own line."""
    return f"\n\n{name}:\n"


def zero_shot(model, tokenizer, passages, labels, names, seed):
    """The GPT as a language model, without a head: each passage's speaker as
    argmax_s log p(passage | heading(s)), through eval.loglikelihood (module docstring).
    A passage keeps its first tokens so that it and the longest heading fit max_positions.
    Returns acc and acc_centred ((acc - chance) / (1 - chance)), each with its bootstrap stderr
    over the passages, beside chance = 1 / k and the number of passages."""
    room = model.config.max_positions - max(len(tokenizer.encode(heading(n))) for n in names)
    texts = []
    for p in passages:
        ids = [int(i) for i in tokenizer.encode(p + "\n")]
        texts.append(p + "\n" if len(ids) <= room else tokenizer.decode(ids[:room]))
    requests = [(heading(name), text) for text in texts for name in names]
    logp = np.array([lp for lp, _ in loglikelihood(model, tokenizer, requests)])
    right = (logp.reshape(len(texts), len(names)).argmax(-1) == labels).astype(np.float64)
    chance = 1.0 / len(names)
    return {"docs": len(texts), "chance": round(chance, 3), **with_stderr("acc", right, seed),
            **with_stderr("acc_centred", (right - chance) / (1.0 - chance), seed)}


def fine_tune(head, ids, lengths, labels, args, train):
    """max_iters steps of the Trainer on random batches of (ids, lengths, labels); two param
    groups, the backbone at learning_rate and the head at head_lr, under one warmup-cosine
    shape. Returns the per-step losses."""
    backbone = [p for p in head.backbone.parameters() if p.requires_grad]
    optimizer = train.adamw([{"params": backbone}, {"params": list(head.score.parameters())}])

    def batch_fn(data, rng):
        ids, lengths, labels = data
        rows = rng.integers(0, len(ids), train.batch_size)
        n = lengths[rows]
        return ids[rows, :n.max()], n, labels[rows]

    def loss_fn(head, batch):
        ids, n, labels = batch
        return F.cross_entropy(head(ids, n), labels)

    trainer = Trainer(head, optimizer, (ids, lengths, labels), None, train, loss_fn=loss_fn,
                      batch_fn=batch_fn, lr_scales=[1.0, args.head_lr / train.learning_rate])
    losses = []
    for step in range(train.max_iters):
        losses.append(trainer.train_step())
        if step % 50 == 0 or step == train.max_iters - 1:
            print(f"  step {step}: loss {np.mean(losses[-50:]):.4f}", flush=True)
    return losses


def run_backbone(kind, data, args, train):
    """Before / after / from-scratch held-out accuracy of one backbone, each with its stderr;
    for the GPT, first its zero-shot accuracy as a language model (fine-tuning changes it)."""
    pretrained, fresh, tokenizer = load_backbone(kind, args, train.seed)
    passages, labels, held, names = data
    ids, lengths = encode(kind, tokenizer, passages, pretrained.config.block_size)
    fit_data = (ids[~held], lengths[~held], labels[~held])
    test = (ids[held], lengths[held], labels[held])
    out = {"parameters": pretrained.num_parameters(),
           "mean_tokens": round(float(lengths.mean()), 1)}
    if kind == "gpt" and args.zero_shot_docs > 0:
        asked = np.random.default_rng(train.seed).permutation(np.flatnonzero(held))
        asked = np.sort(asked[:args.zero_shot_docs])
        out["zero_shot"] = zero_shot(pretrained, tokenizer, [passages[i] for i in asked],
                                     labels[asked], names, train.seed)
        print(f"gpt (zero-shot, as a language model): accuracy {out['zero_shot']['acc']:.3f} "
              f"± {out['zero_shot']['acc_stderr']:.3f} on {len(asked)} held-out passages")
    runs = [("pretrained", pretrained)] + ([("scratch", fresh)] if args.scratch else [])
    for name, backbone in runs:
        tl.manual_seed(train.seed)          # the same head initialisation for both
        head = SequenceHead(backbone, n_out=args.classes)
        before = with_stderr("accuracy_before", correct(head, *test), train.seed)
        print(f"{kind} ({name}): held-out accuracy with the untrained head "
              f"{before['accuracy_before']:.3f} ± {before['accuracy_before_stderr']:.3f}")
        start = time.perf_counter()
        losses = fine_tune(head, *fit_data, args, train)
        seconds = time.perf_counter() - start
        after = with_stderr("accuracy_after", correct(head, *test), train.seed)
        print(f"{kind} ({name}): held-out accuracy after {train.max_iters} steps "
              f"{after['accuracy_after']:.3f} ± {after['accuracy_after_stderr']:.3f}")
        out[name] = {"accuracy_before": before["accuracy_before"],
                     "accuracy_after": after["accuracy_after"],
                     "final_loss": round(float(np.mean(losses[-20:])), 4),
                     "train_s": round(seconds, 1),
                     "accuracy_before_stderr": before["accuracy_before_stderr"],
                     "accuracy_after_stderr": after["accuracy_after_stderr"]}
    return out


def main(argv):
    args, train = parse_args(argv, ClassifyArgs, TrainConfig,
                             defaults={TrainConfig: TRAIN_DEFAULTS})
    kinds = [k.strip() for k in args.backbones.split(",") if k.strip()]
    if not kinds or set(kinds) - {"gpt", "encoder"}:
        raise OptionError(f"--backbones must list 'gpt' and/or 'encoder', got {args.backbones!r}")
    if args.classes < 2 or args.lines < 1 or not 0 < args.held_out < 1:
        raise OptionError(f"need --classes >= 2, --lines >= 1 and 0 < --held_out < 1; got "
                          f"{args.classes}, {args.lines}, {args.held_out}")
    if args.zero_shot_docs < 0:
        raise OptionError(f"--zero_shot_docs must be >= 0, got {args.zero_shot_docs}")
    ensure_backbones(args, kinds)
    start = time.perf_counter()
    passages, labels, speech, names = speaker_passages(shakespeare(), args.classes, args.lines)
    held = split_by_speech(speech, args.held_out, train.seed)
    # the majority baseline: always answer the training set's most common speaker
    majority = np.bincount(labels[~held], minlength=args.classes).argmax()
    task = {"speakers": names, "train_examples": int((~held).sum()),
            "held_out_examples": int(held.sum()),
            "class_fractions": [round(float(f), 3) for f in
                                np.bincount(labels, minlength=args.classes) / len(labels)],
            "majority_baseline": round(float((labels[held] == majority).mean()), 3),
            "majority_baseline_stderr": round(bootstrap_stderr(
                (labels[held] == majority).astype(np.float64), np.mean, seed=train.seed), 3)}
    print(f"task: {task}")
    result = {"task": task, "steps": train.max_iters, "learning_rate": train.learning_rate,
              "head_lr": args.head_lr}
    for kind in kinds:
        result[kind] = run_backbone(kind, (passages, labels, held, names), args, train)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
