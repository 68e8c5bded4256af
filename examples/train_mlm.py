"""Pre-train a small BERT-style Encoder with masked language modelling on tiny Shakespeare, over a
WordPiece vocabulary trained on the same text.

    python examples/train_mlm.py                          # the default: a few minutes on a CPU
    python examples/train_mlm.py --vocab_size=4000 --max_iters=1000 --n_layer=4

Order: configuration, tokenizer (WordPiece, trained here), data (lines packed into sequences of
block_size tokens: [CLS] line [SEP] line [SEP] ... [PAD]...), model (tinygrad_llm.models.Encoder),
AdamW with warmup and cosine decay, the loop, and masked-token accuracy on held-out sequences
before and after. BERT's corruption (Devlin et al., 2019): 15% of the real tokens are chosen, of
those 80% become [MASK], 10% a random token, 10% stay; the loss is read at the chosen positions.
With --out=PATH the encoder is saved there (safetensors; the record holds its config and the
WordPiece vocabulary, so examples/classify.py can rebuild both). The last line of stdout is one
JSON object with the headline numbers.

    python examples/train_mlm.py --out=out-mlm/ckpt.safetensors   # keep the encoder
"""
import dataclasses
import json
import time

import numpy as np

import tinygrad_llm as tl
import tinygrad_llm.nn.functional as F
from tinygrad_llm.data import shakespeare
from tinygrad_llm.models import Encoder, GPTConfig, mask_tokens
from tinygrad_llm.optim import (AdamW, clip_grad_norm_, param_groups_for_weight_decay, set_lr,
                                warmup_cosine)
from tinygrad_llm.tokenizers import WordPieceTokenizer
from tinygrad_llm.train import parse_overrides, save_checkpoint, split_overrides
from tinygrad_llm.train import run_main


@dataclasses.dataclass
class Args:
    data: str = None              # path to the text (default: tiny Shakespeare)
    text_chars: int = 0           # use only the first text_chars characters (0: all)
    vocab_size: int = 2000
    # The likelihood score count(ab) / (count(a) count(b)) favours rare pairs that always occur
    # together; with min_frequency=2 a 2000-token vocabulary on this corpus is spent on rare
    # names and common words stay split into letters. 50 keeps merges to pairs seen 50+ times.
    min_frequency: int = 50
    block_size: int = 64          # T: tokens per sequence
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    batch_size: int = 32
    max_iters: int = 1500
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mask_prob: float = 0.15
    eval_batches: int = 8         # held-out batches for the masked-token accuracy
    val_fraction: float = 0.1
    seed: int = 1337
    device: str = "cpu"
    out: str = None               # where to save the encoder (None: not saved)


def pack_lines(lines_ids, block_size, cls_id, sep_id, pad_id):
    """Greedily pack lines (lists of ids) into rows [CLS] l1 [SEP] l2 [SEP] ... [PAD] ... of
    block_size tokens; a line longer than block_size - 2 is cut. Returns ids (N, T) int64 and
    padding_mask (N, T) bool (True = real token)."""
    rows, row = [], [cls_id]
    for ids in lines_ids:
        ids = ids[:block_size - 2]
        if len(row) + len(ids) + 1 > block_size:
            rows.append(row)
            row = [cls_id]
        row += ids + [sep_id]
    if len(row) > 1:
        rows.append(row)
    out = np.full((len(rows), block_size), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out, out != pad_id


def masked_accuracy(model, ids, padding_mask, tokenizer, args, rng):
    """(mean MLM loss, accuracy of the argmax at the corrupted positions) over held-out rows.
    The same rng seed gives the same corruption, so before/after numbers are comparable."""
    losses, hits, total = [], 0, 0
    with tl.no_grad():
        for start in range(0, len(ids), args.batch_size):
            rows = slice(start, start + args.batch_size)
            idx, mask = ids[rows], padding_mask[rows]
            inputs, labels = corrupt(idx, tokenizer, args, rng)
            logits = model.mlm_logits(inputs, mask)               # (B, T, V)
            chosen = labels != -100
            pred = logits.numpy().argmax(axis=-1)
            hits += int((pred[chosen] == labels[chosen]).sum())
            total += int(chosen.sum())
            losses.append(F.cross_entropy(logits, labels).item())
    return float(np.mean(losses)), hits / max(total, 1)


def corrupt(idx, tokenizer, args, rng):
    return mask_tokens(idx, tokenizer.mask_id, tokenizer.vocab_size, p=args.mask_prob, rng=rng,
                       special_ids=[tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id])


def main(argv):
    (kw,) = split_overrides(parse_overrides(argv), Args)
    args = Args(**kw)
    tl.manual_seed(args.seed)
    start = time.perf_counter()

    # tokenizer: WordPiece trained on the corpus itself
    text = shakespeare(args.data)
    if args.text_chars:
        text = text[:args.text_chars]
    tokenizer = WordPieceTokenizer.train(text, vocab_size=args.vocab_size,
                                         min_frequency=args.min_frequency)
    tokenizer_s = time.perf_counter() - start

    # data: non-empty lines packed into rows; the last val_fraction of rows held out
    lines = [tokenizer.encode(line) for line in text.split("\n") if line.strip()]
    ids, padding_mask = pack_lines(lines, args.block_size, tokenizer.cls_id, tokenizer.sep_id,
                                   tokenizer.pad_id)
    n_val = max(1, int(len(ids) * args.val_fraction))
    train_ids, train_mask = ids[:-n_val], padding_mask[:-n_val]
    val_ids = ids[-n_val:][:args.eval_batches * args.batch_size]
    val_mask = padding_mask[-n_val:][:args.eval_batches * args.batch_size]
    print(f"WordPiece: {tokenizer.vocab_size} tokens in {tokenizer_s:.1f}s; {len(ids)} rows of "
          f"{args.block_size} tokens ({padding_mask.mean():.0%} real); e.g. "
          f"{tokenizer.tokenize(text[:60])}")

    # model: a small bidirectional encoder
    config = GPTConfig.preset("gpt2", vocab_size=tokenizer.vocab_size, block_size=args.block_size,
                              n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                              dropout=0.0)
    model = Encoder(config).to(args.device)
    optimizer = AdamW(param_groups_for_weight_decay(model, args.weight_decay),
                      lr=args.learning_rate)
    print(f"Encoder: {model.num_parameters() / 1e6:.2f}M parameters")

    def evaluate():
        return masked_accuracy(model, val_ids, val_mask, tokenizer, args,
                               np.random.default_rng(args.seed + 1))

    loss_start, acc_start = evaluate()
    print(f"before: held-out MLM loss {loss_start:.3f}, masked accuracy {acc_start:.3f}")

    # the loop: random rows, fresh corruption each step
    rng = np.random.default_rng(args.seed)
    loop_start = time.perf_counter()
    for step in range(args.max_iters):
        rows = rng.integers(0, len(train_ids), args.batch_size)
        inputs, labels = corrupt(train_ids[rows], tokenizer, args, rng)
        set_lr(optimizer, warmup_cosine(step, args.learning_rate, args.min_lr,
                                        min(args.warmup_iters, args.max_iters), args.max_iters))
        loss = model.mlm_loss(inputs, labels, train_mask[rows])
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        if step % 50 == 0 or step == args.max_iters - 1:
            print(f"step {step:4d}: train MLM loss {loss.item():.3f}")
    loop_s = time.perf_counter() - loop_start

    loss_end, acc_end = evaluate()
    print(f"after {args.max_iters} steps: held-out MLM loss {loss_end:.3f}, "
          f"masked accuracy {acc_end:.3f}")
    result = {"mlm_loss_start": round(loss_start, 4), "mlm_loss_end": round(loss_end, 4),
              "masked_acc_start": round(acc_start, 4), "masked_acc": round(acc_end, 4),
              "vocab_size": tokenizer.vocab_size, "steps": args.max_iters,
              "tokenizer_s": round(tokenizer_s, 2), "train_s": round(loop_s, 1),
              "wall_s": round(time.perf_counter() - start, 1)}
    if args.out:
        # "architecture" tells a loader to build an Encoder: train.load_model builds GPTs only
        save_checkpoint(args.out, model, record={
            "architecture": "encoder", "model_config": config.to_dict(),
            "tokenizer": tokenizer.to_dict(), "mlm": {"steps": args.max_iters,
                                                      "masked_acc": result["masked_acc"]}})
        result["checkpoint"] = args.out
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
