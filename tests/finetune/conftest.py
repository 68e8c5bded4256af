"""What the example tests share: the examples folder on sys.path, and a tiny play (a few
speakers repeating four lines) set as the corpus (TINYGRAD_LLM_DATA) for one test module."""
import contextlib
import os
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
SPEECH = ["But soft, what light through yonder window breaks?",
          "It is the east, and Juliet is the sun.",
          "O Romeo, Romeo, wherefore art thou Romeo?",
          "Deny thy father and refuse thy name."]


@contextlib.contextmanager
def _play_corpus(tmp, speakers=("ROMEO", "JULIET"), blocks=120):
    """Write tmp/corpus.txt (`blocks` speeches of two lines, the speakers in turn) and make it
    the corpus inside the with-block; the examples become importable."""
    text = [f"{speakers[i % len(speakers)]}:\n{SPEECH[i % 4]}\n{SPEECH[(i + 1) % 4]}\n"
            for i in range(blocks)]
    path = tmp / "corpus.txt"
    path.write_text("\n".join(text))
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYGRAD_LLM_DATA", str(path))
        yield tmp


@pytest.fixture(scope="session")
def play_corpus():
    """with play_corpus(tmp, speakers, blocks) as tmp: ... (see _play_corpus)."""
    return _play_corpus
