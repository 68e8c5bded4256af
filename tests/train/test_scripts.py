"""One script run from another: the child's output passes through, its last line's JSON comes
back, its stdin can be given, a failure names the command, and ensure_checkpoint runs a script
only when the checkpoint is missing and puts its ckpt.safetensors at the path asked for."""
import json

import pytest

from tinygrad_llm.train import ScriptError, ensure_checkpoint, run_script

CHILD = """
import json, os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
if "fail" in args:
    raise SystemExit(3)
if "out_dir" in args:
    os.makedirs(args["out_dir"], exist_ok=True)
    with open(os.path.join(args["out_dir"], "ckpt.safetensors"), "w") as f:
        f.write("weights")
print("working")
print(json.dumps({"args": args, "stdin": sys.stdin.read() if "read" in args else None}))
"""


@pytest.fixture
def child(tmp_path):
    path = tmp_path / "child.py"
    path.write_text(CHILD)
    return str(path)


def test_run_script_passes_output_through_and_returns_the_last_json(child, capsys):
    result = run_script([child, "--x=1", "--read=1"], input="hello\n")
    assert result == {"args": {"x": "1", "read": "1"}, "stdin": "hello\n"}
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "working" and json.loads(out[1]) == result


def test_run_script_names_a_failed_command(child):
    with pytest.raises(ScriptError, match=r"child.py --fail=1 failed with exit status 3"):
        run_script([child, "--fail=1"])


def test_ensure_checkpoint_trains_only_what_is_missing(child, tmp_path, capsys):
    path = tmp_path / "models" / "teacher.safetensors"
    result = ensure_checkpoint(str(path), [child, "--x=2"])
    assert result["args"] == {"x": "2", "out_dir": str(path.parent)}
    assert path.read_text() == "weights"
    assert not (path.parent / "ckpt.safetensors").exists()          # renamed to the path asked
    assert "teacher.safetensors is missing: training it" in capsys.readouterr().out
    assert ensure_checkpoint(str(path), [child, "--fail=1"]) is None   # there: nothing runs


def test_a_failed_child_is_one_line_and_status_1_under_run_main(child, capsys, monkeypatch):
    from tinygrad_llm.train import run_main
    monkeypatch.setattr("sys.argv", ["pipeline.py"])
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda argv: run_script([child, *argv]), ["--fail=1"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"pipeline.py: {child} --fail=1 failed with exit status 3\n"
