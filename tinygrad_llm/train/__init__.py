"""Training: the loop (trainer.py), checkpoints (checkpoint.py) and `--key=value` configuration
(cli.py)."""
from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .cli import OptionError, parse_overrides, run_main, split_overrides
from .trainer import TrainConfig, Trainer

__all__ = ["Trainer", "TrainConfig", "save_checkpoint", "load_checkpoint", "load_model",
           "CheckpointError", "parse_overrides", "split_overrides", "OptionError", "run_main"]
