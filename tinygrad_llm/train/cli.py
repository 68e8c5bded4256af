"""Command lines: `--key=value` options for dataclass configurations (nanoGPT's habit, without its
exec), `--help` written from the dataclasses' own field comments, and run_main, through which
every example starts.

Reading order: run_main; parse_args (the one call an example makes: argv -> dataclasses);
parse_overrides and split_overrides (the text, then each value converted to its field's type);
help_text with field_comments.

Options. `--key=value` names a field of one of the given dataclasses (a key in two of them goes to
the first); the value converts to the field's type: int, float, str, a JSON dict, or `none` for a
field whose default is None. A boolean takes `--flag`, `--flag=false` (true/false, yes/no, on/off,
1/0) or `--no-flag`. `defaults` gives an example its own defaults for a shared class (a
fine-tuning run's max_iters in TrainConfig). An unknown key, a value that does not convert, or a
bare `--key` for a field that is not a boolean raises OptionError naming it and what was expected;
run_main turns that into one line on stderr and exit status 2, as a command-line tool answers.

Help. `--help` (or `-h`) lists every option with its default and the comment written after its
field, then exits 0:

    max_iters: int = 2000             # optimizer steps      ->   --max_iters=2000  optimizer steps

field_comments reads those comments from the class's source: `ast` gives each field's line,
`tokenize` the comment on it. The dataclass stays its own documentation, read where a reader of
the code looks, and nothing is written twice. Comment lines above a field are notes for that
reader, not help. A field without a comment is listed with its default alone, and so is every
field of a class whose source cannot be read.
"""
import ast
import dataclasses
import difflib
import inspect
import io
import json
import os
import sys
import textwrap
import tokenize
import typing

from ..backend import DeviceUnavailable
from ..distributed.comm import DistributedError
from .scripts import ScriptError

__all__ = ["run_main", "parse_args", "build_config", "parse_overrides", "split_overrides",
           "help_text", "field_comments", "OptionError", "HelpRequested"]

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class OptionError(ValueError):
    """A command-line option that is unknown, malformed, or whose value does not convert."""


class HelpRequested(Exception):
    """--help was given; `text` lists the options (run_main prints it and exits 0)."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text


def run_main(main, argv=None):
    """Call main(argv) (default sys.argv[1:]) and return its result. --help prints the script's
    summary (its module docstring's first paragraph and usage lines) and the options, and
    returns None (exit status 0). An OptionError, DeviceUnavailable, DistributedError (no MPI,
    ranks that disagree) or a failed child script (ScriptError) becomes one line on stderr: exit
    status 2, or 1 for the child."""
    program = os.path.basename(sys.argv[0]) or "python"
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except HelpRequested as h:
        summary = _summary(getattr(sys.modules.get(main.__module__), "__doc__", None))
        text = f"usage: {program} [--key=value ...]\n\n" + (summary + "\n" if summary else "")
        try:
            print(text + h.text, flush=True)
        except BrokenPipeError:         # `--help | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return None
    except (OptionError, DeviceUnavailable, DistributedError, ScriptError) as e:
        sys.stderr.write(f"{program}: {e}\n")     # one write: ranks sharing stderr stay whole
        sys.stderr.flush()
        raise SystemExit(1 if isinstance(e, ScriptError) else 2) from None


def _summary(doc):
    """The first paragraph of a docstring and its indented usage lines (`    python ...`)."""
    if not doc:
        return ""
    paragraphs = textwrap.dedent(doc).strip().split("\n\n")
    usage = [p for p in paragraphs[1:] if p.lstrip().startswith("python ")][:1]
    return "\n\n".join([paragraphs[0], *usage]) + "\n"


def parse_args(argv, *classes, defaults=None):
    """argv -> one instance of each dataclass in `classes` (see the module docstring);
    defaults: {class: {field: value}}, an example's own defaults for a class it shares."""
    kwargs = split_overrides(parse_overrides(argv), *classes, defaults=defaults)
    return [build_config(cls, **kw) for cls, kw in zip(classes, kwargs)]


def build_config(make, *args, **kwargs):
    """make(*args, **kwargs) (a config class, or a constructor such as GPTConfig.preset) with the
    ValueError its checks raise for a value out of range turned into an OptionError, so that a
    command line answers --lr_schedule=foo with one line and exit status 2, like an unknown
    option, rather than a traceback."""
    try:
        return make(*args, **kwargs)
    except OptionError:
        raise
    except ValueError as e:
        raise OptionError(str(e)) from None


def parse_overrides(argv):
    """['--a=1', '--flag', '--no-flag'] -> {'a': '1', 'flag': None, 'no_flag': None}: each
    key (dashes read as underscores) with its text, None for a bare --key."""
    out = {}
    for arg in argv:
        if arg == "-h":
            arg = "--help"
        if not arg.startswith("--") or len(arg) == 2:
            raise OptionError(f"expected --key=value arguments, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        out[key.replace("-", "_")] = value if eq else None
    return out


def _fields(classes):
    """{field name: (index of its class, class, field)}, the first class winning a shared name."""
    fields = {}
    for i, cls in enumerate(classes):
        for f in dataclasses.fields(cls):
            fields.setdefault(f.name, (i, cls, f))
    return fields


def _is_bool(cls, f):
    return _field_type(cls, f) is bool or isinstance(f.default, bool)


def split_overrides(overrides, *classes, defaults=None):
    """Convert each override to its field's type and sort them by dataclass: one dict of keyword
    arguments per class, `defaults` ({class: {field: value}}) under the overrides. Build the
    configs from these dicts, so derived fields (head_dim from n_embd) come from the final
    values. Raises OptionError naming unknown or malformed options, HelpRequested for --help."""
    fields = _fields(classes)
    defaults = defaults or {}
    for cls, values in defaults.items():
        names = {f.name for f in dataclasses.fields(cls)}
        if cls not in classes or set(values) - names:
            raise ValueError(f"split_overrides: defaults for {cls.__name__} name "
                             f"{sorted(set(values) - names) or cls.__name__}, not fields of "
                             f"the classes given")
    if "help" in overrides and "help" not in fields:
        raise HelpRequested(help_text(*classes, defaults=defaults))
    out = [dict(defaults.get(cls, {})) for cls in classes]
    unknown = []
    for key, text in overrides.items():
        negated = key[3:] if key.startswith("no_") and key not in fields else None
        if negated in fields and _is_bool(*fields[negated][1:]):
            if text is not None:
                raise OptionError(f"--no-{negated} takes no value, got --{key}={text}")
            out[fields[negated][0]][negated] = False
        elif key in fields:
            i, cls, f = fields[key]
            out[i][key] = _convert(key, text, _field_type(cls, f), f.default)
        else:
            unknown.append(key)
    if unknown:
        raise OptionError(_unknown_message(unknown, fields))
    return out


def _unknown_message(unknown, fields):
    names = [f"--{k}" for k in unknown]
    close = [m for k in unknown for m in difflib.get_close_matches(k, fields, n=1)]
    hint = f" (did you mean {', '.join('--' + m for m in close)}?)" if close else ""
    return (f"unknown option{'s' if len(names) > 1 else ''} {', '.join(names)}{hint}; valid "
            f"options: {', '.join('--' + k for k in sorted(fields))}")


def _field_type(cls, field):
    hints = typing.get_type_hints(cls)
    return hints.get(field.name, type(field.default))


def _convert(key, text, kind, default):
    if kind is bool or isinstance(default, bool):
        if text is None:
            return True
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise OptionError(f"--{key}: expected a boolean (true/false), got {text!r}")
    if text is None:
        raise OptionError(f"--{key} needs a value: --{key}=<{getattr(kind, '__name__', kind)}>")
    if text.lower() == "none":
        return None
    if kind is int or (isinstance(default, int) and kind not in (float, str, dict)):
        try:
            return int(text)
        except ValueError:
            raise OptionError(f"--{key}: expected an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise OptionError(f"--{key}: expected a number, got {text!r}") from None
    if kind is dict:
        try:
            return json.loads(text)
        except ValueError:
            raise OptionError(f"--{key}: expected a JSON object, got {text!r}") from None
    return text


# ---- --help ---------------------------------------------------------------------------------
def field_comments(cls):
    """{field name: the comment after it on its line}, read from the class's source; {} when
    the source cannot be read."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body
    ends = {node.target.id: node.end_lineno for node in body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    return {name: comments[line] for name, line in ends.items() if line in comments}


def _shown(value):
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)) or (isinstance(value, str) and (
            not value or any(c.isspace() for c in value))):
        return json.dumps(value)
    return str(value)


def help_text(*classes, defaults=None):
    """Every option of `classes`, one line each: --name=default and its field's comment,
    grouped by class (a name shared by two classes is listed once, under the first)."""
    defaults = defaults or {}
    fields = _fields(classes)
    sections = []
    for cls in classes:
        comments = field_comments(cls)
        rows = []
        for f in dataclasses.fields(cls):
            if fields[f.name][1] is not cls:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
                else f.default
            default = defaults.get(cls, {}).get(f.name, default)
            option = f"--{f.name}" if default is dataclasses.MISSING else \
                f"--{f.name}={_shown(default)}"
            rows.append((option, comments.get(f.name, "")))
        width = min(max((len(o) for o, _ in rows), default=0), 30) + 2
        lines = [f"  {o.ljust(width)}{c}".rstrip() if len(o) < width else
                 f"  {o}  {c}".rstrip() for o, c in rows]
        sections.append(f"{cls.__name__} options:\n" + "\n".join(lines))
    return ("\n\n".join(sections) + "\n\nA boolean also takes --flag and --no-flag; `none` "
            "sets an optional value to None.")
