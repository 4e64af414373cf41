"""Your own data (issue 34): `dataset: custom` reads an interaction log and an optional item table from
`custom.dir` and hands `preprocess` the same records the Amazon 2014 reader does (user, item, time, order in
the file; per item its text fields and one category path), so k-core, ordering, leave-one-out, popularity,
tags and item text are computed by the one `preprocess`.

Format `table` (`custom.format: table`, or `auto` when the folder holds these names):
- `interactions.{csv,tsv,parquet,jsonl}[.gz]` with columns `user_id`, `item_id`, `timestamp` (renamed
  through `custom.columns`, e.g. `-S custom.columns.user_id=visitorid`). Timestamps are whole or fractional
  seconds, milliseconds (numbers above 1e11) or ISO-8601 strings; the unit found is said in the summary.
- optional `items.{csv,tsv,parquet,jsonl}[.gz]` with `item_id`, any text columns (`preprocess.text_fields`
  names those that form the item text) and `categories`: one path per item, as a list (`["A", "B", "C"]`)
  or a string `A > B > C`, taken as written (no root level is dropped, unlike the 2014 files).

Columnar readers only (pandas / pyarrow); the one loop per item builds the item records that the 2014
reader also builds. Bad records stop with one line naming the file, the row and the column, or are counted
and skipped under `preprocess.bad_records: skip`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..choices import CUSTOM_FORMATS
from ..utils import DataError, ParamError, log

TABLE_EXTS = (".csv", ".tsv", ".parquet", ".jsonl")
ROOT = "\x00custom"  # a root above every custom path, so that preprocess's root-dropping keeps the path whole
REQUIRED = ("user_id", "item_id", "timestamp")


@dataclass
class Records:
    """What a source gives `preprocess`: one row per interaction in file order, and the item records."""

    interactions: pd.DataFrame  # user_id (str), asin (str), ts (int64 seconds), line (int64, order in the file)
    metas: dict[str, dict]  # item id -> {"categories": [[ROOT, *path]], text fields...}
    report: dict[str, int] = field(default_factory=dict)  # counted skips and line counts
    notes: dict[str, str] = field(default_factory=dict)  # what was detected (format, timestamp unit)
    source: str = ""  # the interactions file, for messages


def _candidates(folder: Path, stem: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and any(
        p.name == f"{stem}{ext}" or p.name == f"{stem}{ext}.gz" for ext in TABLE_EXTS))


def detect_format(folder: Path) -> str:
    """The format of the files in `folder` (`custom.format: auto`): one-line error when none or several fit."""
    if not folder.is_dir():
        raise DataError(f"{folder}: custom.dir is not a folder. Put your files there or pass -S custom.dir=PATH.")
    found = []
    if _candidates(folder, "interactions"):
        found.append("table")
    if any(p.suffix == ".inter" for p in folder.iterdir()):
        found.append("recbole")
    if len(found) != 1:
        what = "no file of a known format" if not found else f"files of several formats ({', '.join(found)})"
        raise DataError(f"{folder}: {what}. Expected interactions.{{csv,tsv,parquet,jsonl}}[.gz] (format table) "
                        f"or <name>.inter (format recbole); keep one, or name it with -S custom.format=...")
    return found[0]


def _one(folder: Path, stem: str, required: bool) -> Path | None:
    found = _candidates(folder, stem)
    if len(found) > 1:
        raise DataError(f"{folder}: several {stem} files ({', '.join(p.name for p in found)}); keep one.")
    if not found and required:
        raise DataError(f"{folder}: no {stem}.{{csv,tsv,parquet,jsonl}}[.gz]. Add it, or point -S custom.dir "
                        "to the folder that holds it.")
    return found[0] if found else None


def _row_name(path: Path, i: int) -> str:
    """How a user finds row i (0-based) of a table: the line of a text file (after the header), else the row."""
    name = path.name.removesuffix(".gz")
    if name.endswith((".csv", ".tsv")):
        return f"{path}:{i + 2}"
    if name.endswith(".jsonl"):
        return f"{path}:{i + 1}"
    return f"{path} row {i + 1}"


def read_table(path: Path, text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A table file as a DataFrame, every column that is not a list kept as read; ids are made strings by
    the caller. One-line errors for unreadable files (cut gzip, not UTF-8, not the format its name says)."""
    name = path.name.removesuffix(".gz")
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if name.endswith(".jsonl"):
            return pd.read_json(path, lines=True, dtype=False)
        sep = "\t" if name.endswith(".tsv") else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}). Save it as UTF-8.") from None
    except (EOFError, OSError) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); is it cut short? Copy it again.") from None
    except ValueError as exc:
        raise DataError(f"{path}: not a valid {name.rsplit('.', 1)[-1]} file ({str(exc).splitlines()[0]}).") from None
    except Exception as exc:  # pyarrow / parser errors of a damaged file
        raise DataError(f"{path}: cannot be read as {name.rsplit('.', 1)[-1]} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}).") from None


def _column(df: pd.DataFrame, path: Path, key: str, columns: dict[str, str]) -> str:
    col = columns.get(key, key)
    if col not in df.columns:
        raise DataError(f"{path}: no column '{col}' (its columns: {', '.join(map(str, df.columns))}). Rename it, or "
                        f"name yours with -S custom.columns.{key}=<your column>.")
    return col


def _ids(s: pd.Series) -> pd.Series:
    """Ids as strings (numbers read from JSON/Parquet too); missing -> ''."""
    out = s.astype("string").fillna("")
    return out.str.strip()


def to_seconds(values: pd.Series) -> tuple[np.ndarray, np.ndarray, str]:
    """Timestamps as int64 seconds, a mask of the unparseable ones, and the unit found: `seconds`,
    `milliseconds` (numbers above 1e11: later than 5138 in seconds, after 1973 in ms) or `ISO-8601`."""
    nums = pd.to_numeric(values, errors="coerce")
    if nums.notna().mean() >= 0.5:  # numbers (a few bad ones are bad rows, not another unit)
        ms = bool(np.nanmax(nums.to_numpy(dtype=float)) > 1e11) if nums.notna().any() else False
        secs = np.floor(nums.to_numpy(dtype=float) / (1000.0 if ms else 1.0))
        bad = ~np.isfinite(secs)
        return np.where(bad, 0, secs).astype(np.int64), bad, "milliseconds" if ms else "seconds"
    when = pd.to_datetime(values.astype("string"), utc=True, errors="coerce", format="ISO8601")
    bad = when.isna().to_numpy()
    epoch = pd.Timestamp(0, tz="UTC")
    secs = ((when.fillna(epoch) - epoch) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)  # any resolution
    return np.where(bad, 0, secs).astype(np.int64), bad, "ISO-8601"


def _bad_rows(mask: np.ndarray, path: Path, column: str, what: str, fix: str, mode: str, report: dict,
              code: str) -> np.ndarray:
    """Stop at the first bad row (mode error) or count them (mode skip); returns the rows kept."""
    if mask.any():
        first = int(np.flatnonzero(mask)[0])
        if mode == "error":
            raise DataError(f"{_row_name(path, first)}: column '{column}': {what}. {fix} Or set "
                            "`preprocess.bad_records: skip` to skip such rows (they are counted in the summary).")
        report[code] = report.get(code, 0) + int(mask.sum())
    return ~mask


def _present(v) -> bool:
    """A cell with a value (not None / NaN / NA / blank)."""
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return False
    return str(v).strip() != ""


def path_of(value) -> list[str]:
    """One category path from a cell: a list / array of names, or a string `A > B > C`."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(x).strip() for x in value if _present(x)]
    if not _present(value):
        return []
    if isinstance(value, str):
        parts = value.split(">") if ">" in value else [value]
    else:
        parts = list(value)
    return [str(x).strip() for x in parts if str(x).strip()]


def read_table_source(folder: Path, columns: dict[str, str], text_fields: tuple[str, ...],
                      bad_records: str = "error") -> Records:
    """Format `table`: interactions (+ items) of `folder` as Records."""
    report: dict[str, int] = {}
    ipath = _one(folder, "interactions", required=True)
    df = read_table(ipath)
    report["review_lines"] = len(df)
    if df.empty:
        raise DataError(f"{ipath}: no rows.")
    ucol, icol, tcol = (_column(df, ipath, k, columns) for k in REQUIRED)
    users, items = _ids(df[ucol]), _ids(df[icol])
    keep = _bad_rows((users == "").to_numpy(), ipath, ucol, "empty user id", "Every row needs a user.",
                     bad_records, report, "reviews_skipped_empty_id")
    keep &= _bad_rows((items == "").to_numpy(), ipath, icol, "empty item id", "Every row needs an item.",
                      bad_records, report, "reviews_skipped_empty_id")
    ts, bad_ts, unit = to_seconds(df[tcol])
    keep &= _bad_rows(bad_ts & keep, ipath, tcol, f"not a timestamp ({df[tcol].iloc[int(np.argmax(bad_ts & keep))]!r})",
                      "Use seconds, milliseconds or ISO-8601 (2014-03-01T12:00:00Z).", bad_records, report,
                      "reviews_skipped_bad_timestamp")
    inter = pd.DataFrame({"user_id": users.to_numpy(dtype=object)[keep], "asin": items.to_numpy(dtype=object)[keep],
                          "ts": ts[keep], "line": np.flatnonzero(keep).astype(np.int64)})
    metas = _item_records(folder, columns, text_fields, set(inter["asin"]), bad_records, report)
    return Records(inter, metas, report, {"format": "table", "timestamps": unit}, str(ipath))


def _item_records(folder: Path, columns: dict[str, str], text_fields: tuple[str, ...], wanted: set[str],
                  bad_records: str, report: dict) -> dict[str, dict]:
    """Per item of the log: its text fields and category path from the items file; an item the file lacks
    (or with no items file at all) gets an empty record (no text, no tags; counted in the summary)."""
    path = _one(folder, "items", required=False)
    if path is None:
        log.warning("%s: no items file: items have no text and no categories", folder)
        return {a: {} for a in wanted}
    df = read_table(path)
    report["meta_lines"] = len(df)
    icol = _column(df, path, "item_id", columns)
    ccol = columns.get("categories", "categories")
    fields = [f for f in text_fields if f != "categories"]
    missing = [f for f in fields if columns.get(f, f) not in df.columns]
    if missing and len(missing) == len(fields) and ccol not in df.columns:
        raise DataError(f"{path}: none of the text columns {', '.join(fields)} (preprocess.text_fields) nor "
                        f"'{ccol}' is a column (its columns: {', '.join(map(str, df.columns))}). Name yours with "
                        "-S preprocess.text_fields=[...].")
    ids = _ids(df[icol])
    keep = _bad_rows((ids == "").to_numpy(), path, icol, "empty item id", "Every row needs an item.", bad_records,
                     report, "meta_skipped_empty_id")
    dup = ids.duplicated(keep="first").to_numpy() & keep
    keep &= _bad_rows(dup, path, icol, f"item {ids.iloc[int(np.argmax(dup))]!r} appears twice",
                      "Keep one row per item.", bad_records, report, "meta_skipped_duplicate_item")
    df, ids = df[keep], ids[keep]
    inlog = ids.isin(wanted).to_numpy()
    df, ids = df[inlog], ids[inlog]
    present = [f for f in fields if columns.get(f, f) in df.columns]
    cols = {f: df[columns.get(f, f)].to_numpy(dtype=object) for f in present}
    cats = df[ccol].to_numpy(dtype=object) if ccol in df.columns else None
    out: dict[str, dict] = {}
    for j, a in enumerate(ids.to_numpy(dtype=object)):
        rec = {f: v[j] for f, v in cols.items() if _present(v[j])}
        p = path_of(cats[j]) if cats is not None else []
        rec["categories"] = [[ROOT, *p]] if p else []
        out[a] = rec
    return out


def read_custom(folder: str | Path, fmt: str, columns: dict[str, str], text_fields: tuple[str, ...],
                bad_records: str = "error") -> Records:
    """The `custom` dataset of `folder` in format `fmt` (`auto`: detected from the file names)."""
    folder = Path(folder)
    if fmt not in CUSTOM_FORMATS:
        raise ParamError(f"custom.format must be one of {', '.join(CUSTOM_FORMATS)}, got {fmt!r}")
    if fmt == "auto":
        fmt = detect_format(folder)
    elif not folder.is_dir():
        raise DataError(f"{folder}: custom.dir is not a folder. Put your files there or pass -S custom.dir=PATH.")
    if fmt == "table":
        return read_table_source(folder, columns, text_fields, bad_records)
    raise DataError(f"custom.format {fmt!r} is not implemented yet (issue 34): write your data as a table "
                    "(interactions.csv with user_id, item_id, timestamp; see README \"Your own data\").")
