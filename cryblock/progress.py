"""Progress lines for long steps (feature extraction, teacher scoring, night scoring, folds).

A long step prints where it is at most every :data:`INTERVAL_S` seconds, as plain lines through
the command's ``log`` (so they reach a terminal, a CI log or a test's captured output alike), and
one line when it is done with the time it took.
"""
from __future__ import annotations

import time
from typing import Callable

#: Seconds between two progress lines of one step.
INTERVAL_S = 15.0


class Progress:
    """``with Progress(total, "scoring …", log) as p: … p.update(n)``: lines like
    ``scoring …: 40 % (1,200 of 3,000) after 16 s`` and ``scoring …: done in 41 s``."""

    def __init__(self, total: int, label: str, log: Callable[[str], None] | None, interval_s: float = INTERVAL_S):
        self.total, self.label, self.log, self.interval = max(0, int(total)), label, log, interval_s
        self.done = 0
        self.t0 = self.last = time.perf_counter()

    def __enter__(self) -> "Progress":
        if self.log:
            self.log(f"{self.label} …")
        return self

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.done += int(n)
        now = time.perf_counter()
        if self.log and now - self.last >= self.interval and self.done < self.total:
            self.last = now
            self.log(f"{self.label}: {100 * self.done / max(1, self.total):.0f} % ({self.done:,} of {self.total:,}) "
                     f"after {now - self.t0:.0f} s")

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.log and exc_type is None:
            self.log(f"{self.label}: done in {time.perf_counter() - self.t0:.0f} s")
        return False
