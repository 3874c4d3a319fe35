"""The agent exits without the interpreter's teardown (hearth_agent/__main__.py `leave`), yet its exit handlers still
run — they stop a CLI that must not outlive the agent — and its last log lines are written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import atexit, logging, sys
from hearth_agent.__main__ import leave
marker = sys.argv[1]
atexit.register(lambda: open(marker, "w").write("handler ran"))
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
logging.getLogger("t").info("last line")

class Torn:
    def __del__(self):
        print("teardown ran", flush=True)  # only the interpreter's teardown (clearing __main__) runs this

torn = Torn()
leave(7)
"""


def test_leave_runs_the_exit_handlers_and_flushes_but_skips_the_teardown(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(marker)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 7, done.stderr
    assert marker.read_text() == "handler ran"
    assert "last line" in done.stderr
    assert "teardown ran" not in done.stdout
