"""What the 2-rank tests launch under mpiexec (and, for the one-process reference, under plain
python): a small GPT trained by the Trainer on random tokens, its per-step losses, evaluations
and a digest of its parameters written to <out>.rank<r>.json by every rank.

    mpiexec -n 2 python tests/distributed/ddp_worker.py '<JSON settings>'

Settings: "train" (TrainConfig fields), "model" (GPTConfig fields), "float64", "device" ("cpu";
"cuda": one GPU per rank, NCCL), "steps" (train steps after any resume), "resume", "out", and
"fault": "hang" (rank 1 stops answering at step 2)
or "differ" (rank 1 takes another learning rate).
"""
import hashlib
import json
import sys
import time

import numpy as np

import tinygrad_llm as tl
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.train import TrainConfig, Trainer


def main(settings):
    tl.manual_seed(0)
    train_kw = dict(batch_size=4, block_size=16, max_iters=1000, eval_interval=1000,
                    eval_iters=3, warmup_iters=2, learning_rate=1e-2, progress=False,
                    checkpoint=False, out_dir=settings.get("out_dir"))
    train_kw.update(settings.get("train", {}))
    rank_hint = _rank()
    if settings.get("fault") == "differ" and rank_hint == 1:
        train_kw["learning_rate"] *= 2
    config = TrainConfig(**train_kw)
    model_kw = dict(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    model_kw.update(settings.get("model", {}))
    model = GPT(GPTConfig(**model_kw))
    if settings.get("float64"):
        model.to(dtype=np.float64)
    model.to(settings.get("device", "cpu"))
    data = np.random.default_rng(0).integers(0, model_kw["vocab_size"], 4000)
    optimizer, lr_scales = config.optimizer_for(model)
    trainer = Trainer(model, optimizer, data[:3500], data[3500:], config, lr_scales=lr_scales,
                      record={"model_config": model_kw}, log=None)
    if settings.get("resume"):
        trainer.load(trainer.ckpt_path)
    losses = []
    for _ in range(settings["steps"]):
        if settings.get("fault") == "hang" and trainer.rank == 1 and trainer.step == 2:
            time.sleep(120)
        losses.append(trainer.train_step())
    evaluation = trainer.evaluate()
    if settings.get("save"):
        trainer.save(trainer.ckpt_path)
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(name.encode() + np.ascontiguousarray(p.numpy()).tobytes())
    state_bytes = sum(a.nbytes for s in optimizer.state.values() for k, a in s.items()
                      if k != "step")
    result = {"rank": trainer.rank, "world_size": trainer.world_size, "losses": losses,
              "eval": evaluation, "digest": digest.hexdigest(), "state_bytes": int(state_bytes),
              "state_entries": len(optimizer.state), "step": trainer.step,
              "params": {name: p.numpy().ravel()[:8].tolist()
                         for name, p in model.named_parameters()}}
    with open(f"{settings['out']}.rank{trainer.rank}.json", "w") as f:
        json.dump(result, f)


def _rank():
    try:
        from mpi4py import MPI
    except ImportError:
        return 0
    return MPI.COMM_WORLD.Get_rank()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
