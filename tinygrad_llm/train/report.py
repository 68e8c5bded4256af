"""What every study prints and writes: a table on stdout, one JSON file, one PNG, and the power-law
fits that the measured curves are summarised by.

The studies (examples/streaming.py, passkey.py, transformer_xl.py, long_context_costs.py, ...)
each measure something different, but a reader should find the results in the same shape: a
fixed-width table to read in the terminal, a JSON file to compare runs with, and a figure. The
figure needs matplotlib (the `plot` extra); without it a study still prints and writes its
numbers and says, in one line, that no PNG was drawn.

A long study also keeps one JSON line per finished run (append_run), so that a killed sweep
resumes where it stopped: read_runs gives them back, skipping a last line the kill cut short.

Reading order: print_table, write_json, save_figure, read_runs, append_run, power_law_fit,
crossovers.
"""
import json
import math
import os

import numpy as np

from ..data.files import atomic_write

__all__ = ["print_table", "write_json", "save_figure", "read_runs", "append_run", "power_law_fit",
           "crossovers"]


def _cell(value):
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return str(value)
        magnitude = abs(value)
        if magnitude != 0 and (magnitude >= 1e5 or magnitude < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}" if magnitude >= 100 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def print_table(rows, columns=None, title=None):
    """Print `rows` (a list of dicts) as a fixed-width table and return its text. columns: the
    keys to show, in order (default: every key, in first-seen order); a missing value shows
    as "-". Floats get 4 significant figures."""
    rows = list(rows)
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(str(c))] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(str(c).rjust(w) for c, w in zip(columns, widths))
    out = ([title] if title else []) + [line, "-" * len(line)]
    out += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    text = "\n".join(out)
    print(text, flush=True)
    return text


def _plain(obj):
    """NumPy scalars and arrays -> Python numbers and lists, so json can write them."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None                     # JSON has no inf / nan
    return obj


def write_json(path, obj):
    """Write `obj` as indented JSON to `path` atomically (parent directories made); NumPy values
    become plain numbers, inf and nan become null. Returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(_plain(obj), f, indent=1)
        f.write("\n")
    return path


def save_figure(path, draw):
    """Draw a figure with `draw(plt)` (matplotlib.pyplot, Agg backend) and save it to `path` as a
    PNG. Returns the path, or None (with one printed line) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"no figure written ({os.path.basename(path)}): matplotlib is not installed "
              f"(pip install 'tinygrad_llm[plot]')")
        return None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plt.close("all")
    draw(plt)
    plt.savefig(path, dpi=120, bbox_inches="tight")
    plt.close("all")
    return path


def read_runs(path):
    """The runs of a JSON-lines log (an empty list when there is none). A line that is not whole
    JSON (a run killed while writing) is skipped with a one-line message: its run runs again."""
    if not os.path.exists(path):
        return []
    runs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                runs.append(json.loads(line))
            except ValueError:
                if line.strip():
                    print(f"{path}:{number}: not a whole JSON line, skipped (its run runs "
                          "again)")
    return runs


def append_run(path, run):
    """Append one finished run as a JSON line; a cut-short last line is ended first, so the new
    one is whole."""
    with open(path, "ab+") as f:
        if f.seek(0, os.SEEK_END):
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(run) + "\n").encode("utf-8"))


def _positive_pairs(x, y, owner):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"{owner}: x and y must be 1-D of one length, got shapes {x.shape} and "
                         f"{y.shape}")
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError(f"{owner}: x and y must be positive (log-log), got min x={x.min()}, "
                         f"min y={y.min()}")
    return x, y


def power_law_fit(x, y):
    """(exponent b, coefficient a) of y ~ a x^b, by least squares of log y on log x: the slope of
    a curve on log-log axes (2 for a cost that grows as T^2)."""
    x, y = _positive_pairs(x, y, "power_law_fit")
    if len(x) < 2:
        raise ValueError(f"power_law_fit: need at least 2 points, got {len(x)}")
    b, log_a = np.polyfit(np.log(x), np.log(y), 1)
    return float(b), float(math.exp(log_a))


def crossovers(x, y1, y2):
    """The x values where curve y2 passes curve y1 (their order changes between two measured
    points), interpolated linearly on log-log axes; [] when they never cross."""
    x, y1 = _positive_pairs(x, y1, "crossovers")
    _, y2 = _positive_pairs(x, y2, "crossovers")
    d = np.log(y2) - np.log(y1)
    lx = np.log(x)
    found = []
    for i in range(len(x) - 1):
        if d[i] == 0:
            found.append(float(x[i]))
        elif d[i] * d[i + 1] < 0:
            t = d[i] / (d[i] - d[i + 1])
            found.append(float(math.exp(lx[i] + t * (lx[i + 1] - lx[i]))))
    return found
