"""Progress a person can follow: one updating line on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    """`update(done)` redraws `label done/total (rate/s, ETA)`; lines every `every` s when not a TTY."""

    def __init__(self, total: int, label: str, stream=None, every: float = 10.0, initial: int = 0):
        self.total, self.label, self.every, self.initial = total, label, every, initial
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = self.last = time.monotonic()

    def update(self, done: int, extra: str = "") -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < self.every and done < self.total:
            return
        self.last = now
        rate = (done - self.initial) / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        text = f"{self.label} {done}/{self.total} ({rate:.2f}/s, ETA {eta:.0f}s){' ' + extra if extra else ''}"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if done >= self.total else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
