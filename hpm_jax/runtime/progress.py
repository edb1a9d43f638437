"""Progress bars with rate and ETA (tqdm), or plain lines where there is no terminal or no tqdm.

    from hpm_jax.runtime import progress
    bar = progress.Bar("apgd-ce", total=40, unit="batch")   # mode from HPM_PROGRESS / auto
    bar.set(3)                                # 3 of 40 done: rate and ETA from the time since
    bar.close()
    progress.echo("a log line")               # printed above live bars, not through them

Modes (`mode=` or the environment variable HPM_PROGRESS): "bars" (tqdm bars on stderr),
"lines" (a plain line `[progress] apgd-ce: 3/40 batch, 2.1 s/batch, ETA 0:01:20` on stderr at
most every HPM_PROGRESS_INTERVAL_S seconds, default 30, for logs and pipes), "off", and
"auto" (the default: bars when stderr is a terminal and tqdm is installed, else lines).
tqdm comes with the `train` extra (`pip install 'hpm-jax[train]'`); without it "bars" falls
back to lines.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from typing import Any

MODES = ("auto", "bars", "lines", "off")
_live: list[Any] = []  # open tqdm bars: lines must be written around them


def _tqdm():
    if importlib.util.find_spec("tqdm") is None:
        return None
    import tqdm

    return tqdm


def resolve_mode(mode: str | None = None) -> str:
    """The mode "bars", "lines" or "off" for `mode` (None: $HPM_PROGRESS, else "auto")."""
    mode = (mode or os.environ.get("HPM_PROGRESS") or "auto").lower()
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r} is not one of {MODES} (HPM_PROGRESS).")
    if mode == "auto":
        return "bars" if sys.stderr.isatty() and _tqdm() is not None else "lines"
    if mode == "bars" and _tqdm() is None:
        return "lines"
    return mode


def _interval() -> float:
    try:
        return float(os.environ.get("HPM_PROGRESS_INTERVAL_S", "30"))
    except ValueError:
        return 30.0


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def echo(line: str, file=None) -> None:
    """print(line) that leaves live bars intact (tqdm.write while bars are open)."""
    file = sys.stdout if file is None else file
    if _live:
        _tqdm().tqdm.write(line, file=file)
        file.flush()
    else:
        print(line, file=file, flush=True)


class Bar:
    """One task's progress: `set(n)` after each unit of work; rate and ETA from wall time.

    The rate counts only the units done since the bar opened (`initial` ones were done by an
    earlier, resumed run), so a resumed task's ETA is not flattered by work it did not do."""

    def __init__(self, desc: str, total: int | None, *, unit: str = "it", initial: int = 0,
                 mode: str | None = None):  # fmt: skip
        self.desc, self.total, self.unit = desc, total, unit
        self.mode = resolve_mode(mode)
        self.n = self._start_n = int(initial)
        self._t0 = self._last_line = time.monotonic()
        self._interval = _interval()
        self._tqdm = None
        if self.mode == "bars":
            self._tqdm = _tqdm().tqdm(
                total=total, desc=desc, unit=unit, initial=int(initial), file=sys.stderr,
                dynamic_ncols=True, leave=True, smoothing=0.1,
            )  # fmt: skip
            _live.append(self._tqdm)

    def rate(self) -> float | None:
        """Units per second since the bar opened (None before the first unit)."""
        done, elapsed = self.n - self._start_n, time.monotonic() - self._t0
        return done / elapsed if done > 0 and elapsed > 0 else None

    def eta(self) -> float | None:
        """Seconds left at the current rate (None when unknown)."""
        rate = self.rate()
        if rate is None or self.total is None:
            return None
        return max(0.0, (self.total - self.n) / rate)

    def describe(self) -> str:
        """'3/40 batch, 2.1 s/batch, ETA 0:01:20' (rate as units/s when faster than 1/s)."""
        total = "?" if self.total is None else str(self.total)
        parts = [f"{self.n}/{total} {self.unit}"]
        rate = self.rate()
        if rate is not None:
            per = f"{rate:.2f} {self.unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{self.unit}"
            parts.append(per)
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {format_seconds(eta)}")
        return ", ".join(parts)

    def set(self, n: int, *, total: int | None = None, postfix: str | None = None) -> None:
        """`n` units are done (of `total`, when it became known only now)."""
        if total is not None and total != self.total:
            self.total = total
            if self._tqdm is not None:
                self._tqdm.total = total
        step = int(n) - self.n
        self.n = int(n)
        if self._tqdm is not None:
            if postfix is not None:
                self._tqdm.set_postfix_str(postfix, refresh=False)
            self._tqdm.update(step)
        elif self.mode == "lines":
            now = time.monotonic()
            finished = self.total is not None and self.n >= self.total
            if now - self._last_line >= self._interval and not finished:
                self._last_line = now
                extra = f" ({postfix})" if postfix else ""
                print(f"[progress] {self.desc}: {self.describe()}{extra}", file=sys.stderr,
                      flush=True)  # fmt: skip

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            if self._tqdm in _live:
                _live.remove(self._tqdm)
            self._tqdm = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
