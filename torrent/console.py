"""The console status display: a live line on a terminal, a plain log line now and then otherwise.

Used by the downloads of the command line and of ``fasttorrent demo``.
Everything goes to stderr, so stdout stays for results (``--json``).
"""

from __future__ import annotations

import sys
import time

__all__ = ["LOG_INTERVAL", "Status"]

#: Without a terminal, the status line is printed as a log line at most this
#: often (seconds), so a log file gets progress without one line per update.
LOG_INTERVAL = 5.0


class Status:
    """A live status line on a terminal; plain log lines every few seconds otherwise.

    Args:
        quiet: print nothing at all.
        live: show the status line (False: log lines only; the CLI turns it off
            when the event stream goes to stdout, which a terminal shows too).
    """

    def __init__(self, quiet: bool, *, live: bool = True) -> None:
        self.quiet = quiet
        self.live = live
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.width = 0

    def line(self, text: str) -> None:
        """Show ``text`` as the current status (it replaces the previous one on a terminal)."""
        if self.quiet or not self.live:
            return
        if self.tty:
            pad = max(0, self.width - len(text))
            sys.stderr.write("\r" + text + " " * pad)
            sys.stderr.flush()
            self.width = len(text)
        else:
            now = time.monotonic()
            if now - self.last >= LOG_INTERVAL:
                self.last = now
                print(text, file=sys.stderr, flush=True)

    def log(self, text: str) -> None:
        """Print ``text`` as a line of its own (ending the status line first)."""
        if self.quiet:
            return
        self.end()
        print(text, file=sys.stderr, flush=True)

    def end(self) -> None:
        """End the status line on a terminal, so what follows starts on a new line."""
        if self.tty and self.width:
            sys.stderr.write("\n")
            self.width = 0
