"""Progress for long work: a tqdm bar on a terminal; elsewhere (CI logs, ``nohup``, a file)
one plain line every ``every`` seconds, so a long silent step is never mistaken for a hang."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

PLAIN_EVERY = 30.0  # seconds between plain progress lines


def on_terminal() -> bool:
    """Whether stderr is a terminal (where progress bars render)."""
    return sys.stderr.isatty()


class Progress:
    """``update(n)`` advances; a bar when ``bar`` is true, else a plain line (``log``, default
    stderr) at most every ``every`` seconds with the count, the total and the rate; ``quiet``
    shows neither.

    Example:
        >>> lines = []
        >>> p = Progress(10, "features", "img", bar=False, log=lines.append, every=0.0)
        >>> p.update(4); p.close()
        >>> lines[0].startswith("features: 4/10 img")
        True
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        bar: bool = False,
        quiet: bool = False,
        log: Callable[[str], None] | None = None,
        every: float = PLAIN_EVERY,
        **bar_args: Any,
    ) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.quiet = quiet
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.bar = (
            tqdm(total=total, desc=desc, unit=unit, leave=False, **bar_args)
            if bar and not quiet
            else None
        )
        self.count = 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(**postfix)
            return
        now = time.perf_counter()
        if self.quiet or now - self.last < self.every:
            return
        self.last = now
        total = f"/{self.total}" if self.total else ""
        rate = self.count / max(now - self.start, 1e-9)
        extra = "".join(f" {k} {v}" for k, v in postfix.items())
        self.log(f"{self.desc}: {self.count}{total} {self.unit} ({rate:.1f} {self.unit}/s){extra}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
