"""Helpers to write small raw files in the official formats."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def write_gz_lines(path: Path, lines: list[str | bytes]) -> Path:
    with gzip.open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


def review(user: str, asin: str, ts: int) -> str:
    return json.dumps({"reviewerID": user, "asin": asin, "unixReviewTime": ts})


def meta(asin: str, title: str | None = "T", cats=(("Root", "A", "B", "C"),), **extra) -> str:
    rec = {"asin": asin, **({"title": title} if title is not None else {}),
           **({"categories": [list(c) for c in cats]} if cats is not None else {}), **extra}
    return repr(rec)
