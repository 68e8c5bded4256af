"""Training: the loop (trainer.py), checkpoints (checkpoint.py), command lines (cli.py: options,
--help, run_main), running one training script from another (scripts.py), and what a study
prints and writes (report.py: a table, JSON, a PNG, power-law fits), and the scaling-law
arithmetic (scaling.py: exact parameter and FLOP counts, IsoFLOP plans, Chinchilla fits), and
architecture search (search.py: the space, successive halving, Pareto fronts, decode speed),
and named presets of configuration fields (recipes.py: the speedrun recipe)."""
from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .cli import (HelpRequested, OptionError, build_config, help_text, parse_args,
                  parse_overrides, run_main, split_overrides)
from . import recipes, report, scaling, search
from .scripts import ScriptError, ensure_checkpoint, run_script
from .trainer import TrainConfig, Trainer, lm_loss

__all__ = ["Trainer", "TrainConfig", "lm_loss", "save_checkpoint", "load_checkpoint",
           "load_model", "CheckpointError", "parse_args", "build_config", "parse_overrides",
           "split_overrides",
           "help_text", "OptionError", "HelpRequested", "run_main", "run_script",
           "ensure_checkpoint", "ScriptError", "recipes", "report", "scaling", "search"]
