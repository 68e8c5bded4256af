"""`--key=value` overrides for dataclass configurations (nanoGPT's habit, without its exec).

Each override names a field of one of the given dataclasses; its value is converted to the field's
type (int, float, bool, str, or None for optional fields) and checked. Unknown keys and values
that don't convert raise OptionError (a ValueError) listing what is valid. `run_main(main, argv)`
is how the examples start: a bad option or an unusable device is one line on stderr and exit
status 2, as a command-line tool answers, not a traceback.
"""
import dataclasses
import sys
import typing

from ..backend import DeviceUnavailable

__all__ = ["parse_overrides", "split_overrides", "OptionError", "run_main"]

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class OptionError(ValueError):
    """A command-line option that is unknown or whose value does not convert."""


def run_main(main, argv=None):
    """Call main(argv) (default sys.argv[1:]); an OptionError or DeviceUnavailable becomes one
    line on stderr and exit status 2."""
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except (OptionError, DeviceUnavailable) as e:
        print(f"{sys.argv[0]}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _field_type(cls, field):
    hints = typing.get_type_hints(cls)
    return hints.get(field.name, type(field.default))


def _convert(key, text, kind, default):
    if text.lower() == "none":
        return None
    if kind is bool or isinstance(default, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise OptionError(f"--{key}: expected a boolean (true/false), got {text!r}")
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
        import json
        try:
            return json.loads(text)
        except ValueError:
            raise OptionError(f"--{key}: expected a JSON object, got {text!r}") from None
    return text


def parse_overrides(argv):
    """['--a=1', '--flag'] -> {'a': '1', 'flag': 'true'} (strings; apply_overrides converts)."""
    out = {}
    for arg in argv:
        if not arg.startswith("--"):
            raise OptionError(f"expected --key=value arguments, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        out[key.replace("-", "_")] = value if eq else "true"
    return out


def split_overrides(overrides, *classes):
    """Convert each override to its field's type and sort them by dataclass: one dict of keyword
    arguments per class (a key goes to the first class that has it). Build the configs from these
    dicts, so derived fields (head_dim from n_embd) are computed from the final values.
    Raises ValueError naming unknown keys and listing the valid ones."""
    fields = {}
    for i, cls in enumerate(classes):
        for f in dataclasses.fields(cls):
            fields.setdefault(f.name, (i, cls, f))
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise OptionError(f"unknown options {['--' + k for k in unknown]}; valid options: "
                         f"{sorted('--' + k for k in fields)}")
    out = [{} for _ in classes]
    for key, text in overrides.items():
        i, cls, f = fields[key]
        out[i][key] = _convert(key, text, _field_type(cls, f), f.default)
    return out
