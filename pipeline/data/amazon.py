"""Official Amazon 2014 per-category files: where they live, how to fetch them, how to read them.

Formats (McAuley et al., 2014/2015, "5-core" review sets):
- `reviews_<Cat>_5.json.gz`: one strict JSON object per line (reviewerID, asin, unixReviewTime, ...).
- `meta_<Cat>.json.gz`: one *python-literal* dict per line (asin, title, categories, brand, ...),
  parsed with `ast.literal_eval` (strict JSON lines are accepted too).

Readers never drop a record silently: a bad record either raises `DataError` naming the file, the
line and the fix, or (with `bad_records="skip"`) is skipped and counted in the returned report.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import re
import urllib.error
import urllib.request
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..choices import AMAZON2014
from ..progress import progress
from ..utils import DataError, atomic_path, log

# dataset key (params.yaml `dataset`) -> official category name used in the file names
CATEGORIES = AMAZON2014  # pipeline/choices.py

# Official download location of the 2014 per-category files (linked from
# https://jmcauley.ucsd.edu/data/amazon/ , the paper's footnote 3).
OFFICIAL_BASE_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"

# SHA-256 of the official files. The source publishes no checksums, so this table starts empty;
# a download records the digest of what it fetched in `<file>.sha256` beside the file, and every
# later run verifies the file against that record.
KNOWN_SHA256: dict[str, str] = {}


def category_of(dataset: str) -> str:
    try:
        return CATEGORIES[dataset]
    except KeyError:
        raise DataError(
            f"unknown dataset '{dataset}'. Choose one of: {', '.join(CATEGORIES)} "
            "(params.yaml key `dataset`)."
        ) from None


def file_names(dataset: str) -> tuple[str, str]:
    cat = category_of(dataset)
    return f"reviews_{cat}_5.json.gz", f"meta_{cat}.json.gz"


def candidate_dirs(raw_dir: str | Path, dataset: str) -> list[Path]:
    raw = Path(raw_dir)
    return [raw / dataset, raw / category_of(dataset), raw]


def locate(raw_dir: str | Path, dataset: str) -> Path | None:
    """The first of `<raw_dir>/<dataset>/`, `<raw_dir>/<Category>/`, `<raw_dir>/` holding both files."""
    reviews, meta = file_names(dataset)
    for d in candidate_dirs(raw_dir, dataset):
        if (d / reviews).is_file() and (d / meta).is_file():
            return d
    return None


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: Path) -> None:
    """Check `path` against KNOWN_SHA256 or its recorded `<file>.sha256`, when either exists."""
    side = path.with_name(path.name + ".sha256")
    expected = KNOWN_SHA256.get(path.name) or (side.read_text().split()[0] if side.exists() else None)
    if expected is None:
        return
    got = sha256_of(path)
    if got != expected:
        raise DataError(
            f"{path}: SHA-256 {got[:12]}... does not match the recorded {expected[:12]}... "
            f"The file is corrupt or was replaced: delete it (and {side.name}) and run again to "
            "download a fresh copy."
        )


def download(url: str, dest: Path, timeout: float = 15.0) -> Path:
    """Fetch `url` to `dest` with a progress bar, atomically, and record its SHA-256."""
    log.info("downloading %s -> %s", url, dest)
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_path(dest) as tmp:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with open(tmp, "wb") as out, progress(
            total=total, unit="B", unit_scale=True, desc=dest.name, leave=False
        ) as bar:
            while block := resp.read(1 << 20):
                out.write(block)
                h.update(block)
                bar.update(len(block))
        digest = h.hexdigest()
        expected = KNOWN_SHA256.get(dest.name)
        if expected and digest != expected:
            raise DataError(f"{url}: downloaded file has SHA-256 {digest}, expected {expected}.")
    dest.with_name(dest.name + ".sha256").write_text(f"{digest}  {dest.name}\n")
    return dest


def ensure_raw(
    raw_dir: str | Path,
    dataset: str,
    allow_download: bool = True,
    base_url: str = OFFICIAL_BASE_URL,
    timeout: float = 15.0,
) -> tuple[Path, Path]:
    """Return the (reviews, meta) paths, downloading the official files when missing."""
    reviews, meta = file_names(dataset)
    found = locate(raw_dir, dataset)
    if found is None:
        target = Path(raw_dir) / dataset
        where = "\n".join(f"  - {d}/" for d in candidate_dirs(raw_dir, dataset))
        hint = (
            f"Put {reviews} and {meta} (from {OFFICIAL_BASE_URL}) in one of:\n{where}\n"
            f"or point `raw_dir` in params.yaml at the folder that has them "
            f"(e.g. `dvc exp run -S raw_dir=/path/to/amazon2014`)."
        )
        if not allow_download:
            raise DataError(f"raw files for dataset '{dataset}' not found and download=false.\n{hint}")
        target.mkdir(parents=True, exist_ok=True)
        try:
            for name in (reviews, meta):
                if not (target / name).is_file():
                    download(base_url + name, target / name, timeout=timeout)
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise DataError(
                f"raw files for dataset '{dataset}' are missing and the download from "
                f"{base_url} failed ({exc}). Offline?\n{hint}"
            ) from None
        found = target
    for name in (reviews, meta):
        verify_checksum(found / name)
    return found / reviews, found / meta


# --------------------------------------------------------------------------------------- readers


@dataclass
class ReadReport:
    lines: int = 0
    bad: Counter = None  # reason -> count (only with bad_records="skip")
    first_bad: dict = None  # reason -> "file:line" of the first occurrence

    def __post_init__(self):
        self.bad = Counter() if self.bad is None else self.bad
        self.first_bad = {} if self.first_bad is None else self.first_bad


def _bad(report: ReadReport, mode: str, path: Path, lineno: int, code: str, reason: str, fix: str) -> None:
    """Raise (mode "error") or count under `code` (mode "skip") one bad record."""
    where = f"{path}:{lineno}"
    if mode == "error":
        raise DataError(
            f"{where}: {reason}. {fix} Or set `preprocess.bad_records: skip` in params.yaml to skip "
            "such records (they are counted in the stage summary)."
        )
    report.bad[code] += 1
    report.first_bad.setdefault(code, where)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw bytes) of a gzip file, turning corruption into DataError."""
    lineno = 0
    try:
        with gzip.open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                yield lineno, raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"{path}: the gzip stream is truncated or corrupt after line {lineno} ({exc}). "
            "Delete the file and download it again (or copy it again from its source)."
        ) from None


def _decode(raw: bytes, report, mode, path, lineno) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        _bad(report, mode, path, lineno, "non_utf8", f"non-UTF-8 byte at offset {exc.start}",
             "The official files are UTF-8: re-download the file or re-encode that line.")
        return None


def read_reviews(path: Path, bad_records: str = "error") -> tuple[list[tuple[str, str, int]], ReadReport]:
    """Read (reviewerID, asin, unixReviewTime) triples; extra fields are ignored."""
    report = ReadReport()
    rows: list[tuple[str, str, int]] = []
    for lineno, raw in progress(_lines(path), desc=f"read {path.name}", unit=" lines", leave=False):
        if not raw.strip():
            continue
        report.lines += 1
        text = _decode(raw, report, bad_records, path, lineno)
        if text is None:
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            _bad(report, bad_records, path, lineno, "malformed_json", f"malformed JSON: {exc.msg}",
                 "Each line must be one JSON object.")
            continue
        try:
            rows.append((str(rec["reviewerID"]), str(rec["asin"]), int(rec["unixReviewTime"])))
        except (KeyError, TypeError, ValueError) as exc:
            _bad(report, bad_records, path, lineno, "missing_field",
                 f"missing or invalid field {exc} (need reviewerID, asin, unixReviewTime)",
                 "Fix or remove the record.")
    if not rows:
        raise DataError(f"{path}: no valid review records found.")
    return rows, report


_ASIN_RE = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


def read_meta(path: Path, wanted: set[str] | None = None, bad_records: str = "error") -> tuple[dict[str, dict], ReadReport]:
    """Read meta records keyed by asin. Lines whose asin is not in `wanted` are not parsed."""
    report = ReadReport()
    out: dict[str, dict] = {}
    for lineno, raw in progress(_lines(path), desc=f"read {path.name}", unit=" lines", leave=False):
        if not raw.strip():
            continue
        report.lines += 1
        text = _decode(raw, report, bad_records, path, lineno)
        if text is None:
            continue
        if wanted is not None:
            m = _ASIN_RE.search(text)
            if m is not None and m.group(1) not in wanted:
                continue  # an item nobody reviewed: not needed (not a drop)
        try:
            rec = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            try:
                rec = json.loads(text)
            except json.JSONDecodeError:
                _bad(report, bad_records, path, lineno, "malformed_record", "malformed record: neither a python literal nor JSON",
                     "Each line must be one dict.")
                continue
        if not isinstance(rec, dict) or "asin" not in rec:
            _bad(report, bad_records, path, lineno, "no_asin", "record without 'asin'", "Fix or remove the record.")
            continue
        out[str(rec["asin"])] = rec
    return out, report
