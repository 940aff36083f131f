"""SIGTERM and SIGINT for `lens serve`: the first starts a graceful drain, a second exits at
once.

Exiting at once loses nothing a client was told is stored: a collection write is answered
only after its SQLite transaction has committed with `synchronous=FULL`
(`lens_server.collections.sqlite`), and a FAISS snapshot is written to a temporary file and
renamed into place (`lens_server.collections.snapshots`), so the next start finds the last
snapshot and replays the write log after it. Only calls still in flight are cut off.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The exit code of a second signal: 128 + its number, as a shell reports a process
    that signal ended (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


class Signals:
    """Watches SIGINT and SIGTERM on `loop`: `received` is set by the first; a second ends
    the process at once with `exit_code`, saying so on stderr."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.received = asyncio.Event()
        self.name = ""  # the first signal's name, once received
        for signum in SIGNALS:
            loop.add_signal_handler(signum, self._on, signum)

    def _on(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self.received.is_set():
            self.name = name
            self.received.set()
            return
        code = exit_code(signum)
        print(
            f"lens: {name} during the drain: exiting now with code {code}; calls in flight "
            "are cut off, acknowledged collection writes are already stored",
            file=sys.stderr,
            flush=True,
        )
        os._exit(code)  # at once: no thread is joined, nothing more is awaited
