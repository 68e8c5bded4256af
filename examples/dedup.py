"""Deduplication and what it does to training (issue 28, part 3): tiny Shakespeare's training
split cut into documents, a corrupted copy with exact and near duplicates injected, how many of
them exact and near (MinHash + LSH) dedup find, and the same small character GPT trained at the
same compute on the corrupted, the deduplicated and the clean corpus.

    python examples/dedup.py                  # the whole training split, 4x128 model, 2000 steps
    python examples/dedup.py --quick=true     # 60k characters, 5% copied 64x, a 2x64 model
    python examples/dedup.py --dup_fraction=0.3 --copies=6 --near_edits=8 --threshold=0.7

Reading order: Args; documents (speeches joined to at least doc_chars characters); corruption
(copies of a random dup_fraction of the documents: exact, re-spaced and edited, shuffled in);
scoring a dedup against the injected truth; one training run (a fresh model, the fixed
validation batches, the memorisation probes); main: the table, JSON, figure and the last line.

1. Data: the 90/10 character split of train_shakespeare.py; the validation part is never
   duplicated, deduplicated or trained on. Documents: consecutive speeches (blank-line separated)
   joined until they hold at least --doc_chars characters.
2. Corruption: --dup_fraction of the documents, chosen at random, get --copies extra copies
   each, of kinds cycling exact, near, spacing, near: an exact copy; a near copy with
   --near_edits characters replaced by random letters (Jaccard ~0.9 at 5-gram shingles); a
   spacing copy with some single spaces doubled (exact after normalisation). Every copy is
   placed at a random position among the documents, so it can precede its original.
3. Dedup: tinygrad_llm.data.dedup_exact (blake2b of the lowercased, whitespace-collapsed text)
   and dedup_near (MinHash over character 5-grams of the normalised text, --num_perm hash
   functions, LSH bands chosen for --threshold, verified by estimated Jaccard, union-find, the
   first of each group kept). Throughput is timed after a warm-up call (Numba's compile, or
   its cache load, excluded). Against the injected truth: a removed document is a true
   positive when its group's kept document is of its family (an original and its copies);
   recall = true positives / injected copies, precision = true positives / removed.
4. Training: the same GPT (learned positions, GELU, tied head), initialisation, batches-per-
   step, block, steps and schedule on each corpus ("corrupted", "deduplicated" = dedup_near's
   kept documents, "clean" = the documents before corruption); validation loss on fixed windows
   of the held-out split; the loss on the duplicated documents' and the other documents' text;
   memorisation: --probes snippets of --prompt_chars characters from the duplicated
   documents (and as many from the others), continued greedily (generate, temperature 0) for
   --continuation characters; memorised when the continuation equals the training text's next
   characters exactly (match_chars: the mean length of the agreeing prefix).

Writes out_dir/dedup.json and dedup.png (left: the S-curve P(candidate | s) = 1 - (1 - s^r)^b
of the chosen bands and rows with the exact Jaccard of the injected near copies to their
originals and the threshold; middle: validation loss along training per corpus; right: the
memorisation rate and loss on the duplicated against the other documents), prints the tables
and ends with one JSON line.

What the figures can show at this scale: that exact hashing misses every copy that is not
byte-identical after normalisation and MinHash finds the edited ones; how fast both run in
Python + Numba on this machine; and, for a small model, that repeated documents are learned
better (a lower loss on them, more exact continuations) at the expense of the rest of the
data, which the same compute covers fewer times. What they cannot show: how much dedup helps a
real model on real web data (Lee et al., 2022). The duplication rate, the copy kinds and the
edit counts are chosen by hand, not measured from a crawl; one seed, one tiny model, a few
hundred to a few thousand steps; tiny Shakespeare itself repeats speaker names and short lines
(dedup_near finds ~35 natural groups in the full text; documents of hundreds of characters
have almost none), and those are not counted as injected. The memorisation probes are a few
dozen snippets: their rates are coarse (one probe is 1/probes), and a tiny model reproduces
20 characters exactly only of text it saw dozens of times (the quick default's 64 copies).

What the quick run gave (idle 2 cores, OMP_NUM_THREADS=1, 66-71 s; 103 documents of 60k
characters, 5 of them copied 64 times: 320 copies, 242k characters): exact dedup found the 160
exact and re-spaced copies (recall 0.50, precision 1.00), near dedup all 320 (10,389 candidate
pairs, 10,267 verified; 2,600-3,600 documents/s, 1.5-2.1 MB/s in two runs) and merged nothing
else. After 1200 steps
of 8 x 128 characters with a 2x64 model: validation loss 3.127 on the corrupted corpus, 2.415
deduplicated, 2.410 clean; on the corrupted corpus the duplicated documents' loss is 0.39 nats
against 2.64 for the rest, and 26 of the 32 probes from duplicated documents (0.81) are
continued exactly for 20 characters (the agreeing prefix averages 17.7 characters), against
none of the 32 from the other documents and none of any probe for the models trained on the
deduplicated or the clean corpus (about one agreeing character). Repetition is memorised, and
the repeated 5% of documents took 80% of the characters trained on, at 0.7 nats of validation
loss. With 5% copied 32 times (--copies=32 --dup_fraction=0.05 --clean=false): 0.06 memorised,
validation 2.897 against 2.406.

An earlier quick default (one run, seed 0; 103 documents of 60k characters, 26 of them copied 8
times: 208 copies, 196k characters): exact dedup found the 104 exact and re-spaced copies
(recall 0.50, precision 1.00) and none of the edited ones; near dedup (16 bands of 8 rows, 934
candidate pairs, 925 verified) found all 208 (recall 1.00, precision 1.00) and merged nothing
else. After 1200 steps of 8 x 128 characters with a 2x64 model: validation loss 2.447 on the
corrupted corpus, 2.397 deduplicated, 2.410 clean; on the corrupted corpus the duplicated
documents' loss is 0.15 nats below the other documents' (1.782 against 1.931), on the
deduplicated one 0.04 above (1.883 against 1.840): the repeated 30% of documents took the
compute that the rest of the data lacked. No probe was reproduced exactly by any model (0 of
32), and the agreeing prefix was about one character for all three: at 9 copies of a document
only the loss gap showed memorisation. That machine was shared (load average 7-8 on 2 cores):
the run took 22 minutes.
"""
import dataclasses
import json
import os
import time

import numpy as np

import tinygrad_llm as tl
from tinygrad_llm.data import (candidate_probability, dedup_exact, dedup_near, exact_jaccard,
                               get_batch, shakespeare, split)
from tinygrad_llm.data.dedup import normalize
from tinygrad_llm.generate import generate
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.optim import param_groups_for_weight_decay
from tinygrad_llm.tokenizers import CharTokenizer
from tinygrad_llm.train import OptionError, TrainConfig, Trainer, parse_args, run_main
from tinygrad_llm.train.report import print_table, save_figure, write_json

KINDS = ("exact", "near", "spacing", "near")     # the kinds of a document's copies, in turn
LETTERS = "abcdefghijklmnopqrstuvwxyz"
QUICK = dict(text_chars=60_000, dup_fraction=0.05, copies=64, n_layer=2, n_embd=64,
             batch_size=8, steps=1200, eval_batches=8, probes=32)
FULL = dict(text_chars=None, dup_fraction=0.25, copies=4, n_layer=4, n_embd=128, batch_size=16,
            steps=2000, eval_batches=16, probes=64)


@dataclasses.dataclass
class Args:
    quick: bool = False          # 60k characters, 5% of the docs copied 64x, 2x64 model, 1200 steps
    out_dir: str = "out-dedup"   # dedup.json, dedup.png
    data: str = None             # path to the text (none: tiny Shakespeare)
    device: str = "cpu"          # "cpu" or "cuda"
    text_chars: int = None       # the first this many training characters (none: all; quick 60k)
    doc_chars: int = 400         # a document: consecutive speeches joined to >= this many chars
    dup_fraction: float = None   # the fraction of the documents copied (none: 0.25; quick: 0.05)
    copies: int = None           # extra copies of each duplicated document (none: 4; quick: 64)
    near_edits: int = 4          # characters replaced in a near copy
    threshold: float = 0.8       # dedup_near: the Jaccard similarity that makes a duplicate
    num_perm: int = 128          # dedup_near: MinHash functions
    shingle: int = 5             # dedup_near: characters per shingle (k)
    n_layer: int = None          # transformer blocks (none: 4; quick: 2)
    n_embd: int = None           # width (none: 128; quick: 64)
    n_head: int = 4              # attention heads
    block_size: int = 128        # characters per training sequence
    batch_size: int = None       # sequences per step (none: 16; quick: 8)
    steps: int = None            # optimizer steps per corpus (none: 2000; quick: 1200)
    learning_rate: float = 3e-3  # the peak of warmup + cosine (to a tenth)
    eval_batches: int = None     # fixed validation batches (none: 16; quick: 8)
    curve_points: int = 4        # validation points along each run (for the figure)
    probes: int = None           # memorisation snippets from the duplicated docs (none: 64)
    prompt_chars: int = 50       # characters of training text given as the prompt
    continuation: int = 20       # characters the greedy continuation must reproduce
    clean: bool = True           # also train on the clean corpus (before corruption)
    seed: int = 0                # corruption, initialisation, batches and probes


def _resolve(args):
    """Fill the None defaults from FULL or QUICK and check the values (OptionError lines)."""
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name in ("doc_chars", "copies", "near_edits", "num_perm", "shingle", "n_layer", "n_embd",
                 "n_head", "block_size", "batch_size", "steps", "eval_batches", "curve_points",
                 "probes", "prompt_chars", "continuation"):
        if getattr(args, name) < 1:
            raise OptionError(f"--{name}: expected an int >= 1, got {getattr(args, name)}")
    if not 0 < args.dup_fraction <= 1:
        raise OptionError(f"--dup_fraction: expected a fraction in (0, 1], got "
                          f"{args.dup_fraction}")
    if not 0 < args.threshold <= 1:
        raise OptionError(f"--threshold: expected a number in (0, 1], got {args.threshold}")
    if args.prompt_chars + args.continuation > args.block_size:
        raise OptionError(f"--prompt_chars + --continuation: {args.prompt_chars} + "
                          f"{args.continuation} exceeds --block_size={args.block_size}")
    if args.doc_chars < args.prompt_chars + args.continuation:
        raise OptionError(f"--doc_chars: expected >= prompt_chars + continuation = "
                          f"{args.prompt_chars + args.continuation}, got {args.doc_chars}")
    return args


# ---- documents and corruption -------------------------------------------------------------
def documents(text, doc_chars):
    """Consecutive speeches (blank-line separated) joined until each holds >= doc_chars
    characters; a short remainder joins the last document."""
    docs, current = [], []
    for speech in text.split("\n\n"):
        current.append(speech)
        if sum(len(s) + 2 for s in current) - 2 >= doc_chars:
            docs.append("\n\n".join(current))
            current = []
    if current:
        if docs:
            docs[-1] = "\n\n".join([docs[-1]] + current)
        else:
            docs.append("\n\n".join(current))
    return docs


def near_copy(doc, edits, rng):
    """doc with `edits` letters (not spaces, newlines or punctuation) replaced by others."""
    chars = list(doc)
    where = [i for i, c in enumerate(chars) if c.isalpha()]
    for i in rng.choice(where, min(edits, len(where)), replace=False):
        chars[i] = rng.choice([c for c in LETTERS if c != chars[i].lower()])
    return "".join(chars)


def spacing_copy(doc, edits, rng):
    """doc with up to `edits` single spaces doubled: equal to doc after normalize()."""
    chars = list(doc)
    where = [i for i, c in enumerate(chars) if c == " "]
    for i in rng.choice(where, min(edits, len(where)), replace=False):
        chars[i] = "  "
    return "".join(chars)


def corrupt(docs, args, rng):
    """(corpus, family, kind, chosen): the documents with copies of a random dup_fraction of
    them placed at random positions. family[i]: the original's index for an original that has
    copies and for each copy, -1 for the rest; kind[i]: "original" or the copy's kind."""
    n = len(docs)
    chosen = np.sort(rng.choice(n, max(1, round(args.dup_fraction * n)), replace=False))
    items = [(float(i), doc, -1, "original") for i, doc in enumerate(docs)]
    for i in chosen.tolist():
        items[i] = (float(i), docs[i], i, "original")
        for c in range(args.copies):
            kind = KINDS[c % len(KINDS)]
            text = docs[i] if kind == "exact" else near_copy(docs[i], args.near_edits, rng) \
                if kind == "near" else spacing_copy(docs[i], args.near_edits, rng)
            items.append((float(rng.uniform(0, n)), text, i, kind))
    items.sort(key=lambda item: item[0])          # stable: a copy keyed i lands after original i
    return ([t for _, t, _, _ in items], np.array([f for _, _, f, _ in items]),
            [k for _, _, _, k in items], chosen)


def score(result, family, kind):
    """Recall and precision of a dedup against the injected copies. A copy is found when it
    lands in its original's group (recall: found / injected, also per kind of copy); a removed
    document is a true positive when its group's kept document is of its family (precision:
    true positives / removed), so a copy kept in place of its original costs nothing."""
    rep = result.representative
    kinds = np.array(kind)
    original = {int(family[i]): i for i in np.flatnonzero((family >= 0) & (kinds == "original"))}
    copies = np.flatnonzero(kinds != "original")
    found = np.array([rep[i] == rep[original[int(family[i])]] for i in copies], dtype=bool)
    removed = np.flatnonzero(rep != np.arange(len(rep)))
    true = (family[removed] >= 0) & (family[removed] == family[rep[removed]])
    row = dict(removed=len(removed), true_positives=int(true.sum()),
               recall=float(found.mean()) if len(copies) else None,
               precision=float(true.mean()) if len(removed) else None)
    for k in sorted(set(KINDS)):
        of_kind = kinds[copies] == k
        row[f"recall_{k}"] = float(found[of_kind].mean()) if of_kind.any() else None
    return row


# ---- one training run ---------------------------------------------------------------------
def fixed_batches(ids, args, n, salt):
    """n windows of ids drawn once from the seed (the same for every run)."""
    rng = np.random.default_rng([args.seed, salt])
    return [get_batch(ids, args.batch_size, args.block_size, rng) for _ in range(n)]


def mean_loss(model, batches, device):
    model.eval()
    with tl.no_grad():
        losses = [model(tl.backend.to_device(x, device),
                        tl.backend.to_device(y, device))[1].item() for x, y in batches]
    model.train()
    return float(np.mean(losses))


def probes(docs, n, args, rng):
    """n (prompt, continuation) character snippets at random offsets inside random docs."""
    span = args.prompt_chars + args.continuation
    out = []
    for i in rng.choice(len(docs), n, replace=len(docs) < n):
        doc = docs[i]
        start = int(rng.integers(0, len(doc) - span + 1))
        out.append((doc[start:start + args.prompt_chars],
                    doc[start + args.prompt_chars:start + span]))
    return out


def memorisation(model, snippets, tokenizer, args):
    """(fraction of snippets whose greedy continuation reproduces the training text exactly,
    mean length of the agreeing prefix in characters)."""
    prompts = np.stack([tokenizer.encode(p) for p, _ in snippets])
    model.eval()
    out = generate(model, prompts, args.continuation, temperature=0, seed=args.seed)
    model.train()
    exact, prefix = [], []
    for row, (_, target) in zip(out[:, prompts.shape[1]:], snippets):
        got = tokenizer.decode(row)
        exact.append(got == target)
        agree = [a == b for a, b in zip(got, target)] + [False]
        prefix.append(agree.index(False))
    return float(np.mean(exact)), float(np.mean(prefix))


def train_run(name, text, tokenizer, args, evals):
    """A fresh model trained for args.steps steps on `text`; returns its record."""
    start = time.perf_counter()
    ids = tokenizer.encode(text)
    tl.manual_seed(args.seed)
    config = GPTConfig.preset("gpt2", vocab_size=tokenizer.vocab_size, n_layer=args.n_layer,
                              n_head=args.n_head, n_embd=args.n_embd,
                              block_size=args.block_size, dropout=0.0, bias=False)
    model = GPT(config).to(args.device)
    train_config = TrainConfig(
        batch_size=args.batch_size, block_size=args.block_size, max_iters=args.steps,
        learning_rate=args.learning_rate, min_lr=args.learning_rate / 10,
        warmup_iters=max(1, args.steps // 20), weight_decay=0.1, beta2=0.99, grad_clip=1.0,
        seed=args.seed, out_dir=None, checkpoint=False, progress=False)
    optimizer = train_config.adamw(param_groups_for_weight_decay(model, 0.1))
    trainer = Trainer(model, optimizer, ids, None, train_config, log=None)
    marks = {max(1, round(args.steps * k / args.curve_points))
             for k in range(1, args.curve_points + 1)}
    curve, losses = [], []
    for _ in range(args.steps):
        losses.append(trainer.train_step())
        if trainer.step in marks:
            curve.append(dict(step=trainer.step,
                              val_loss=mean_loss(model, evals["val"], args.device)))
    mem_dup, match_dup = memorisation(model, evals["probes_dup"], tokenizer, args)
    mem_other, match_other = memorisation(model, evals["probes_other"], tokenizer, args)
    tokens = args.steps * args.batch_size * args.block_size
    return dict(corpus=name, chars=len(text), steps=args.steps, epochs=tokens / len(ids),
                val_loss=curve[-1]["val_loss"],
                train_loss=float(np.mean(losses[-max(1, args.steps // 10):])),
                dup_loss=mean_loss(model, evals["dup"], args.device),
                other_loss=mean_loss(model, evals["other"], args.device),
                memorised_dup=mem_dup, memorised_other=mem_other, match_chars_dup=match_dup,
                match_chars_other=match_other, parameters=model.num_parameters(),
                train_s=time.perf_counter() - start, curve=curve)


# ---- the figure -----------------------------------------------------------------------------
def _draw(near_jaccards, bands, rows, threshold, runs):
    def draw(plt):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        ax = axes[0]
        s = np.linspace(0, 1, 201)
        ax.plot(s, candidate_probability(s, bands, rows), "k-",
                label=f"P(candidate | s), b={bands}, r={rows}")
        ax.axvline(threshold, color="r", ls="--", label=f"threshold {threshold:g}")
        ax.set_xlabel("Jaccard similarity s (character 5-grams)")
        ax.set_ylabel("P(candidate | s)")
        ax.set_title("LSH S-curve and the injected near copies")
        ax.legend(fontsize=7, loc="upper left")
        counts = ax.twinx()
        counts.hist(near_jaccards, bins=50, range=(0, 1), alpha=0.4, color="tab:blue")
        counts.set_ylabel("near copies (exact Jaccard to their original)", color="tab:blue")
        ax = axes[1]
        for run in runs:
            ax.plot([p["step"] for p in run["curve"]], [p["val_loss"] for p in run["curve"]],
                    "o-", label=run["corpus"])
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss (nats / character)")
        ax.set_title("same compute, three corpora")
        ax.legend(fontsize=8)
        ax = axes[2]
        x = np.arange(len(runs))
        ax.bar(x - 0.2, [r["dup_loss"] for r in runs], 0.4, label="loss on duplicated docs")
        ax.bar(x + 0.2, [r["other_loss"] for r in runs], 0.4, label="loss on the other docs")
        ax.set_xticks(x, [f"{r['corpus']}\nmemorised {r['memorised_dup']:.2f} / "
                          f"{r['memorised_other']:.2f}" for r in runs], fontsize=7)
        values = [r[k] for r in runs for k in ("dup_loss", "other_loss")]
        ax.set_ylim(min(values) - 0.1, max(values) + 0.05)
        ax.set_ylabel("training-text loss (nats / character)")
        ax.set_title("memorisation: duplicated vs other documents")
        ax.legend(fontsize=7)
        fig.tight_layout()
    return draw


# ---- main -----------------------------------------------------------------------------------
def main(argv):
    args = _resolve(parse_args(argv, Args)[0])
    wall, load = time.perf_counter(), os.getloadavg()[0]
    rng = np.random.default_rng(args.seed)

    # data: the 90/10 character split; the training part cut into documents and corrupted
    text = shakespeare(args.data)
    tokenizer = CharTokenizer.from_text(text)
    train_text, val_text = split(text, 0.1)
    if args.text_chars is not None:
        train_text = train_text[:args.text_chars]
    docs = documents(train_text, args.doc_chars)
    if len(docs) < 4:
        raise OptionError(f"--text_chars / --doc_chars: {len(train_text)} characters make "
                          f"{len(docs)} documents of >= {args.doc_chars} characters; expected "
                          "at least 4")
    corpus, family, kind, chosen = corrupt(docs, args, rng)
    injected = len(corpus) - len(docs)
    print(f"{len(docs)} documents ({len(train_text):,} characters); {len(chosen)} duplicated "
          f"{args.copies} times each: {injected} copies, {len(corpus)} documents "
          f"({sum(map(len, corpus)):,} characters)", flush=True)

    # dedup: a warm-up call first (Numba's compile or cache load is not throughput)
    dedup_near(docs[:2], threshold=args.threshold, num_perm=args.num_perm, k=args.shingle)
    exact = dedup_exact(corpus)
    near = dedup_near(corpus, threshold=args.threshold, num_perm=args.num_perm,
                      k=args.shingle, seed=args.seed)
    rows = []
    for name, result in (("exact", exact), ("near", near)):
        r = result.report
        rows.append(dict(method=name, **score(result, family, kind), kept=r["n_kept"],
                         groups=r["n_groups"], seconds=r["seconds"], docs_per_s=r["docs_per_s"],
                         mb_per_s=r["mb_per_s"]))
    print_table(rows, columns=["method", "kept", "removed", "groups", "true_positives",
                               "recall", "precision", "recall_exact", "recall_spacing",
                               "recall_near", "seconds", "docs_per_s", "mb_per_s"],
                title=f"dedup of {len(corpus)} documents against the {injected} injected copies "
                      f"(near: {args.num_perm} MinHash functions, {near.report['bands']} bands "
                      f"of {near.report['rows']} rows, threshold {args.threshold:g}, "
                      f"{near.report['candidates']} candidate pairs, "
                      f"{near.report['verified_pairs']} verified; {near.report['kernel']})")
    near_jaccards = [exact_jaccard(normalize(corpus[i]), normalize(docs[family[i]]),
                                   args.shingle)
                     for i in range(len(corpus)) if kind[i] == "near"]

    # the same training on each corpus; the evaluation sets are fixed before the first run
    val_ids = tokenizer.encode(val_text)
    duplicated = [docs[i] for i in chosen.tolist()]
    others = [d for i, d in enumerate(docs) if i not in set(chosen.tolist())]
    probe_rng = np.random.default_rng([args.seed, 2])
    evals = dict(val=fixed_batches(val_ids, args, args.eval_batches, 1),
                 dup=fixed_batches(tokenizer.encode("\n\n".join(duplicated)), args,
                                   args.eval_batches, 3),
                 other=fixed_batches(tokenizer.encode("\n\n".join(others)), args,
                                     args.eval_batches, 4),
                 probes_dup=probes(duplicated, args.probes, args, probe_rng),
                 probes_other=probes(others, args.probes, args, probe_rng))
    corpora = [("corrupted", corpus), ("deduplicated", [corpus[i] for i in near.kept])]
    if args.clean:
        corpora.append(("clean", docs))
    runs = []
    for name, texts in corpora:
        run = train_run(name, "\n\n".join(texts), tokenizer, args, evals)
        runs.append(run)
        print(f"{name}: val loss {run['val_loss']:.4f}, memorised {run['memorised_dup']:.3f} "
              f"of duplicated / {run['memorised_other']:.3f} of other snippets "
              f"({run['train_s']:.1f} s)", flush=True)
    print_table(runs, columns=["corpus", "chars", "epochs", "val_loss", "train_loss",
                               "dup_loss", "other_loss", "memorised_dup", "memorised_other",
                               "match_chars_dup", "match_chars_other", "train_s"],
                title=f"{args.n_layer}x{args.n_embd} GPT, {args.steps} steps of "
                      f"{args.batch_size}x{args.block_size} characters on each corpus; "
                      f"memorised: {args.probes} snippets of {args.prompt_chars} characters "
                      f"whose greedy {args.continuation} characters match exactly")

    png = save_figure(os.path.join(args.out_dir, "dedup.png"),
                      _draw(near_jaccards, near.report["bands"], near.report["rows"],
                            args.threshold, runs))
    wall = time.perf_counter() - wall
    by = {r["corpus"]: r for r in runs}
    by_method = {r["method"]: r for r in rows}
    json_path = write_json(os.path.join(args.out_dir, "dedup.json"), {
        "args": dataclasses.asdict(args), "documents": len(docs), "duplicated": len(chosen),
        "injected": injected, "corpus_documents": len(corpus), "dedup": rows,
        "near_report": near.report, "exact_report": exact.report,
        "near_copy_jaccard": {"min": min(near_jaccards, default=None),
                              "mean": float(np.mean(near_jaccards)) if near_jaccards else None},
        "runs": runs, "png": png, "wall_s": wall,
        "machine": {"cpu_count": os.cpu_count(), "load_avg_start": load,
                    "load_avg_end": os.getloadavg()[0]}})
    result = {"val_loss": {n: round(r["val_loss"], 4) for n, r in by.items()},
              "memorised_dup": {n: round(r["memorised_dup"], 4) for n, r in by.items()},
              "dup_loss": {n: round(r["dup_loss"], 4) for n, r in by.items()},
              "exact_recall": round(by_method["exact"]["recall"], 4),
              "exact_precision": by_method["exact"]["precision"] and
              round(by_method["exact"]["precision"], 4),
              "near_recall": round(by_method["near"]["recall"], 4),
              "near_precision": by_method["near"]["precision"] and
              round(by_method["near"]["precision"], 4),
              "near_docs_per_s": round(near.report["docs_per_s"], 1),
              "near_mb_per_s": round(near.report["mb_per_s"], 3),
              "injected": injected, "wall_s": round(wall, 1), "json": json_path}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
