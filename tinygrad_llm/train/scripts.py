"""Running one training script from another, as a user would from a shell: an example that starts
from a trained model runs the example that trains it when the checkpoint is missing, and a
pipeline (chat_speedrun.py) runs one example per stage. A script is a command line, not a module:
the two share no code and need not be importable from each other.

Reading order: run_script (a child process: its output passes through, Ctrl-C goes to it, the
JSON object on its last line comes back; every example ends with one), then ensure_checkpoint
(a script run into a checkpoint path when the file is missing).
"""
import json
import os
import signal
import subprocess
import sys
import threading

__all__ = ["run_script", "ensure_checkpoint", "ScriptError"]


class ScriptError(RuntimeError):
    """A script run by run_script exited with a non-zero status."""


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)     # the child's Python installs its handler


def run_script(argv, input=None):
    """Run `python argv[0] argv[1:]` to its end; return the JSON object on the last line of its
    stdout (None when that line is not JSON). Its stdout is copied to ours line by line, its
    stderr is ours; `input` (text) is its stdin. Ctrl-C goes to the child alone: a training
    script saves a checkpoint and stops, and this process goes on to read what it printed.
    Raises ScriptError naming the command when it fails."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    last = ""
    try:
        with subprocess.Popen([sys.executable, *argv], env=env, text=True, encoding="utf-8",
                              stdin=None if input is None else subprocess.PIPE,
                              stdout=subprocess.PIPE, preexec_fn=_default_sigint) as child:
            if input is not None:
                child.stdin.write(input)
                child.stdin.close()
            for line in child.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                last = line if line.strip() else last
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    if child.returncode:
        raise ScriptError(f"{' '.join(argv)} failed with exit status {child.returncode}")
    try:
        return json.loads(last)
    except ValueError:
        return None


def ensure_checkpoint(path, argv):
    """Make the checkpoint `path` when it is missing: run the training script argv (argv[0] the
    script) with --out_dir=<path's folder>. It writes <out_dir>/ckpt.safetensors (the Trainer's
    name), renamed to `path` when that is another name. Returns the script's JSON result, or None
    when the file was there."""
    if os.path.exists(path):
        return None
    out_dir = os.path.dirname(path) or "."
    argv = [*argv, f"--out_dir={out_dir}"]
    print(f"{path} is missing: training it (python {' '.join(argv)})", flush=True)
    result = run_script(argv)
    written = os.path.join(out_dir, "ckpt.safetensors")
    if os.path.abspath(written) != os.path.abspath(path):
        os.replace(written, path)
    return result
