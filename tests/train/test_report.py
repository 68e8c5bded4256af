"""train/report.py: the table, the JSON file, the figure, the runs log and the power-law fits
every study uses."""
import json
import math

import numpy as np
import pytest

from tinygrad_llm.train.report import (append_run, crossovers, power_law_fit, print_table,
                                       read_runs, save_figure, write_json)


def test_table_aligns_columns_and_marks_missing_values(capsys):
    text = print_table([{"method": "dense", "loss": 1.23456, "bytes": 4096},
                        {"method": "int4", "loss": float("inf")}], title="t")
    lines = text.splitlines()
    assert lines[0] == "t" and capsys.readouterr().out.strip() == text
    assert lines[1].split() == ["method", "loss", "bytes"]
    assert lines[3].split() == ["dense", "1.2346", "4096"]
    assert lines[4].split() == ["int4", "inf", "-"]
    assert len({len(line) for line in lines[1:]}) == 1           # fixed width


def test_table_keeps_the_given_column_order():
    text = print_table([{"a": 1, "b": 2}], columns=["b", "a"])
    assert text.splitlines()[0].split() == ["b", "a"]


def test_json_is_plain_and_written_whole(tmp_path):
    path = write_json(tmp_path / "sub" / "r.json",
                      {"x": np.float32(0.5), "y": np.arange(3), "z": float("nan"), 1: (2, 3)})
    assert json.loads(open(path).read()) == {"x": 0.5, "y": [0, 1, 2], "z": None, "1": [2, 3]}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["r.json"]   # no temporary left


def test_figure_is_drawn_or_skipped_with_a_message(tmp_path, capsys):
    path = save_figure(str(tmp_path / "f.png"), lambda plt: plt.plot([1, 2], [3, 4]))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert path is None and "matplotlib is not installed" in capsys.readouterr().out
    else:
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_power_law_fit_recovers_exponent_and_coefficient():
    x = np.array([256, 1024, 4096, 16384.0])
    b, a = power_law_fit(x, 3e-9 * x ** 2)
    assert b == pytest.approx(2.0) and a == pytest.approx(3e-9)


def test_crossovers_interpolate_on_log_log_axes():
    x = np.array([1.0, 10.0, 100.0])
    quadratic, linear = x ** 2, 10 * x          # equal at x = 10, a measured point
    assert crossovers(x, quadratic, linear) == [10.0]
    # between points: y1 = x^2 and y2 = 30 x cross at x = 30
    assert crossovers(x, x ** 2, 30 * x)[0] == pytest.approx(30.0)
    assert crossovers(x, x, 2 * x) == []


@pytest.mark.parametrize("x, y, match", [([1, 2], [1], "one length"), ([0, 1], [1, 2], "positive"),
                                         ([1], [1], "at least 2")])
def test_fits_reject_bad_input(x, y, match):
    with pytest.raises(ValueError, match=match):
        power_law_fit(x, y)


def test_runs_log_resumes_after_a_cut_short_line(tmp_path, capsys):
    path = str(tmp_path / "runs.jsonl")
    assert read_runs(path) == []
    append_run(path, {"size": "1x16", "loss": 3.5})
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"size": "2x32", "lo')                 # killed while writing
    assert read_runs(path) == [{"size": "1x16", "loss": 3.5}]
    assert "runs.jsonl:2: not a whole JSON line" in capsys.readouterr().out
    append_run(path, {"size": "2x32", "loss": 3.1})    # ends the torn line before its own
    assert read_runs(path) == [{"size": "1x16", "loss": 3.5}, {"size": "2x32", "loss": 3.1}]
