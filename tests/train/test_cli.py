"""Command lines: --key=value conversion, booleans (--flag, --flag=false, --no-flag), unknown and
malformed options as one line and exit status 2, --help written from the dataclasses' field
comments (exit 0), an example's own defaults, and every example answering --help."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinygrad_llm.models import GPTConfig
from tinygrad_llm.train import (HelpRequested, OptionError, TrainConfig, build_config,
                                help_text, parse_args, parse_overrides, run_main,
                                split_overrides)
from tinygrad_llm.train.cli import field_comments

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclasses.dataclass
class Options:
    name: str = "x"               # what the run is called
    steps: int = 3                # how many
    # a note for the reader of the code, not a help line
    rate: float = 0.5
    verbose: bool = False         # say more
    path: str = None              # where it goes (none: nowhere)


def test_overrides_convert_types_and_reject_unknown_keys():
    kw_train, kw_model = split_overrides(
        parse_overrides(["--max_iters=7", "--learning_rate=3e-4", "--bias=false",
                         "--n_kv_head=none", "--pos=rope"]), TrainConfig, GPTConfig)
    assert kw_train == {"max_iters": 7, "learning_rate": 3e-4}
    assert kw_model == {"bias": False, "n_kv_head": None, "pos": "rope"}
    with pytest.raises(OptionError, match=r"unknown option --n_layers \(did you mean --n_layer\?\);"
                                          r" valid options: .*--n_layer, "):
        split_overrides(parse_overrides(["--n_layers=3"]), TrainConfig, GPTConfig)
    with pytest.raises(OptionError, match="--max_iters: expected an integer, got 'many'"):
        split_overrides(parse_overrides(["--max_iters=many"]), TrainConfig)
    with pytest.raises(OptionError, match="expected --key=value"):
        parse_overrides(["max_iters=3"])


@pytest.mark.parametrize("argv, expected", [
    (["--verbose"], True), (["--verbose=true"], True), (["--verbose=no"], False),
    (["--verbose=false"], False), (["--no-verbose"], False), (["--no_verbose"], False),
    (["--verbose", "--no-verbose"], False), ([], False)])
def test_booleans(argv, expected):
    (options,) = parse_args(argv, Options)
    assert options.verbose is expected


@pytest.mark.parametrize("argv, message", [
    (["--verbose=maybe"], "--verbose: expected a boolean"),
    (["--no-verbose=true"], "--no-verbose takes no value"),
    (["--steps"], r"--steps needs a value: --steps=<int>"),
    (["--no-steps"], "unknown option --no_steps"),
    (["--stepz=4"], r"did you mean --steps\?")])
def test_malformed_options_name_themselves(argv, message):
    with pytest.raises(OptionError, match=message):
        parse_args(argv, Options)


def test_defaults_sit_under_the_overrides():
    options, train = parse_args(["--max_iters=9"], Options, TrainConfig,
                                defaults={TrainConfig: {"max_iters": 5, "batch_size": 2}})
    assert (train.max_iters, train.batch_size, options.steps) == (9, 2, 3)
    with pytest.raises(ValueError, match="max_iter"):
        parse_args([], TrainConfig, defaults={TrainConfig: {"max_iter": 5}})


def test_field_comments_are_the_trailing_comment_of_each_field():
    comments = field_comments(Options)
    assert comments == {"name": "what the run is called", "steps": "how many",
                        "verbose": "say more", "path": "where it goes (none: nowhere)"}
    assert field_comments(TrainConfig)["max_iters"] == "optimizer steps"


def test_help_lists_every_option_with_its_default_and_meaning():
    text = help_text(Options, TrainConfig, defaults={TrainConfig: {"max_iters": 5}})
    lines = text.splitlines()
    assert lines[0] == "Options options:"
    assert any(line.split() == ["--name=x", "what", "the", "run", "is", "called"]
               for line in lines)
    assert any(line.strip() == "--rate=0.5" for line in lines)           # no comment: bare
    assert any(line.split()[:2] == ["--path=none", "where"] for line in lines)
    assert any(line.split()[:3] == ["--max_iters=5", "optimizer", "steps"] for line in lines)
    for f in dataclasses.fields(TrainConfig):
        assert sum(line.lstrip().startswith(f"--{f.name}=") for line in lines) == 1
    with pytest.raises(HelpRequested) as h:
        parse_args(["--steps=2", "--help"], Options)
    assert "--steps=3" in h.value.text


def _main(argv):
    (options,) = parse_args(argv, Options)
    return options


def test_run_main_prints_help_and_returns(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog.py"])
    assert run_main(_main, ["-h"]) is None
    out = capsys.readouterr().out
    assert out.startswith("usage: prog.py [--key=value ...]")
    assert "--verbose=false  say more" in out and "Command lines:" in out   # this docstring


def test_run_main_turns_a_bad_option_into_one_line_and_status_2(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog.py"])
    with pytest.raises(SystemExit) as exit_:
        run_main(_main, ["--stepz=4"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prog.py: unknown option --stepz")


def test_a_value_a_config_refuses_is_one_line_and_status_2(capsys, monkeypatch):
    """A field's own check (TrainConfig: zero needs ddp; GPTConfig: heads divide the width)
    answers as an unknown option does, through build_config, which parse_args uses."""
    with pytest.raises(OptionError, match="lr_schedule must be one of"):
        build_config(TrainConfig, lr_schedule="foo")
    with pytest.raises(OptionError, match="n_embd=192 is not divisible by n_head=5"):
        build_config(GPTConfig.preset, "gpt2", n_embd=192, n_head=5)
    with pytest.raises(TypeError):                          # not a value check: not rewritten
        build_config(TrainConfig, no_such_field=1)
    monkeypatch.setattr(sys, "argv", ["prog.py"])
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda argv: parse_args(argv, TrainConfig), ["--zero=true"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "zero=True shards the optimizer" in err


def test_the_main_example_answers_a_refused_value_in_one_line(load_example, capsys,
                                                                shakespeare_text, monkeypatch):
    main = load_example("train_shakespeare").main
    monkeypatch.setattr(sys, "argv", ["train_shakespeare.py"])
    for option, words in (("--zero=true", "zero=True shards the optimizer over the ranks"),
                          ("--n_head=5", "n_embd=192 is not divisible by n_head=5")):
        with pytest.raises(SystemExit) as exit_:
            run_main(main, [option, "--max_iters=1"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and words in err


EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_every_example_answers_help(name):
    """--help exits 0 listing every option with a meaning; a misspelt one exits 2 in one line.
    (GPTConfig's fields have no comments yet: they are listed with their defaults alone.)"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(EXAMPLES.parent), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(EXAMPLES / name), "--help"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"usage: {name} [--key=value ...]")
    sections = run.stdout.split("\n\n")
    options = [line for s in sections if s.endswith("options:") or " options:\n" in s
               for line in s.splitlines()[1:]]
    own = [line for s in sections if " options:\n" in s and not s.startswith("GPTConfig")
           for line in s.splitlines()[1:]]
    assert options and all(line.startswith("  --") for line in options)
    assert all(len(line.split()) > 1 for line in own), [l for l in own if len(l.split()) < 2]
    bad = subprocess.run([sys.executable, str(EXAMPLES / name), "--no_such_option=1"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "unknown option --no_such_option" in bad.stderr and "Traceback" not in bad.stderr
