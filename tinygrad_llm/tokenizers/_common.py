"""Pieces the tokenizers share: the pair merge of BPE and WordPiece training, and the check that
a dict (from a checkpoint record or a JSON file) is the serialised form of a given tokenizer."""

__all__ = ["merge_pair", "check_dict"]


def merge_pair(symbols, a, b, merged):
    """Replace every (a, b) of `symbols` by `merged`, left to right without overlaps
    ("aaa" with (a, a) -> merged a)."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def check_dict(d, kind, version, owner):
    """Raise ValueError unless d is a dict with type `kind` and version `version`."""
    if not isinstance(d, dict) or d.get("type") != kind or d.get("version") != version:
        got = (d.get("type"), d.get("version")) if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"expected a {owner} dict (type {kind!r}, version {version}), got "
                         f"{got!r}")
