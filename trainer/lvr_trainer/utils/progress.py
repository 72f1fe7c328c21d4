"""Progress a person can follow: a tqdm bar on a terminal, a plain line every few seconds in a log."""

from __future__ import annotations

import sys


class Progress:
    """`update(done, extra)`: `label done/total (rate, ETA) extra`. On a terminal a tqdm bar redrawn in place;
    elsewhere (a pod's log) tqdm's own line, written as a line of its own at most every `every` seconds."""

    def __init__(self, total: int, label: str, stream=None, every: float = 10.0, initial: int = 0):
        import threading

        from tqdm import tqdm

        # tqdm's defaults start a monitor thread and a multiprocessing lock (which forks a resource-tracker
        # process): neither is wanted in a process that also serves and forks workers
        tqdm.monitor_interval = 0
        if not isinstance(getattr(tqdm, "_lock", None), type(threading.RLock())):
            tqdm.set_lock(threading.RLock())
        stream = stream or sys.stderr
        tty = stream.isatty()
        line = None if tty else "{desc} {n_fmt}/{total_fmt} ({rate_fmt}, ETA {remaining}){postfix}\n"
        self.bar = tqdm(total=total, desc=label, initial=initial, file=stream, bar_format=line, ascii=not tty,
                        mininterval=0.2 if tty else every, dynamic_ncols=tty)

    def update(self, done: int, extra: str = "") -> None:
        self.bar.set_postfix_str(extra, refresh=False)
        self.bar.update(done - self.bar.n)
        if done >= self.bar.total and not self.bar.disable:
            self.bar.close()
