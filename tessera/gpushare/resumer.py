"""A watcher that resumes every process its node agent stopped, once that agent is gone.

    python -m tessera.gpushare.resumer LEDGER        (stdin: a pipe the agent holds open)

The agent starts it at start-up in a session of its own and keeps the write end of a pipe to its
standard input. When the agent exits -- cleanly, or killed with SIGKILL -- the kernel closes that end;
this process then reads end-of-file, sends SIGCONT to every process the ledger lists (by pid and
start time), and exits. A clean exit leaves an empty ledger, so there is nothing to do then.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import IO

from tessera.gpushare.signals import resume_listed


def start(ledger: Path) -> subprocess.Popen[bytes]:
    """Start the watcher for `ledger`; keep the returned process's stdin open for as long as you live."""
    return subprocess.Popen(
        [sys.executable, "-m", "tessera.gpushare.resumer", str(ledger)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the agent's process group must not take it too
        close_fds=True,
    )


def wait_for_eof(stream: IO[bytes]) -> None:
    while stream.read(4096):
        pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m tessera.gpushare.resumer LEDGER\n")
        return 2
    wait_for_eof(sys.stdin.buffer)
    try:
        doc = json.loads(Path(args[0]).read_text())
    except (OSError, ValueError):
        return 0
    resume_listed(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
