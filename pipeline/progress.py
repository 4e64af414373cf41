"""Progress bars that read well in a terminal and in a log file.

In a terminal (stderr is a TTY) `progress` is a plain tqdm bar. Otherwise (a log file, CI, `dvc repro`
piped) tqdm would write one carriage-return update after another, glued together on one line; here
it writes a whole line at most every `PRISM_PROGRESS_S` seconds (default 30), so a long stage leaves a
few readable lines. `TQDM_DISABLE=1` turns bars off altogether.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


class _Lines:
    """A file-like target for tqdm that turns its in-place updates into separate lines."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        s = s.replace("\r", "").strip()
        if s:
            self.stream.write(s + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _Steady(tqdm):
    """tqdm whose postfix/description changes wait for the next timed update instead of printing."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s="", refresh=True):
        super().set_postfix_str(s, refresh=False)

    def set_description(self, desc=None, refresh=True):
        super().set_description(desc, refresh=False)


def interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(iterable=None, **kwargs) -> tqdm:
    """tqdm in a terminal; elsewhere a few whole lines at a steady interval (see the module doc)."""
    if not interactive():
        interval = float(os.environ.get("PRISM_PROGRESS_S", "30"))
        kwargs.setdefault("mininterval", interval)
        kwargs.setdefault("maxinterval", interval)
        kwargs.update(file=_Lines(sys.stderr), dynamic_ncols=False, ncols=100, ascii=True)
        return _Steady(iterable, **kwargs)
    return tqdm(iterable, **kwargs)
