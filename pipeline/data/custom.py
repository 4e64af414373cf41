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

import csv
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


def _atomic(folder: Path, suffix: str) -> list[Path]:
    """RecBole atomic files of one kind (`.inter`, `.item`), plain or gzipped."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.removesuffix(".gz").endswith(suffix))


def _amazon2023_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(reviews, meta) file pairs of the Amazon Reviews 2023 layout: `<Category>.jsonl[.gz]` beside
    `meta_<Category>.jsonl[.gz]`."""
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file():
            name = p.name.removesuffix(".gz")
            if name.endswith(".jsonl") and name in files:
                raise DataError(f"{folder}: {files[name].name} and {p.name} are the same file twice; keep one.")
            files[name] = p
    return sorted((files[n], files["meta_" + n]) for n in files
                  if n.endswith(".jsonl") and not n.startswith("meta_") and n != "interactions.jsonl"
                  and n != "items.jsonl" and "meta_" + n in files)


def detect_format(folder: Path) -> str:
    """The format of the files in `folder` (`custom.format: auto`): one-line error when none or several fit."""
    if not folder.is_dir():
        raise DataError(f"{folder}: custom.dir is not a folder. Put your files there or pass -S custom.dir=PATH.")
    found = []
    if _candidates(folder, "interactions"):
        found.append("table")
    if _atomic(folder, ".inter"):
        found.append("recbole")
    if _amazon2023_pairs(folder):
        found.append("amazon2023")
    if len(found) != 1:
        what = "no file of a known format" if not found else f"files of several formats ({', '.join(found)})"
        raise DataError(f"{folder}: {what}. Expected interactions.{{csv,tsv,parquet,jsonl}}[.gz] (format table), "
                        f"<name>.inter (format recbole) or <Category>.jsonl[.gz] with meta_<Category>.jsonl[.gz] "
                        f"(format amazon2023); keep one, or name it with -S custom.format=...")
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
    if name.endswith((".csv", ".tsv", ".inter", ".item")):
        return f"{path}:{i + 2}"
    if name.endswith(".jsonl"):
        return f"{path}:{i + 1}"
    return f"{path} row {i + 1}"


def why(exc: BaseException, limit: int = 160) -> str:
    """A library's error message on one line (some span several), cut to `limit` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_bad_utf8(path: Path) -> str:
    """`file:line` of the first line that is not UTF-8 (the error path only: a scan line by line)."""
    import gzip
    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as fh:
            for i, raw in enumerate(fh, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return f"{path}:{i}"
    except (OSError, EOFError):
        pass
    return str(path)


def read_table(path: Path, sep: str | None = None) -> pd.DataFrame:
    """A table file as a DataFrame, every column that is not a list kept as read; ids are made strings by
    the caller. One-line errors for unreadable files (cut gzip, not UTF-8, not the format its name says)."""
    name = path.name.removesuffix(".gz")
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if name.endswith(".jsonl"):
            return pd.read_json(path, lines=True, dtype=False)
        if sep is None:
            sep = "\t" if name.endswith(".tsv") else ","
        quoting = csv.QUOTE_NONE if name.endswith((".inter", ".item")) else csv.QUOTE_MINIMAL  # RecBole: no quoting
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8",
                           quoting=quoting)
    except UnicodeDecodeError:
        raise DataError(f"{_first_bad_utf8(path)}: not UTF-8 text. Save it as UTF-8.") from None
    except (EOFError, OSError) as exc:
        raise DataError(f"{path}: cannot be read ({why(exc)}); is it cut short? Copy it again.") from None
    except ValueError as exc:
        raise DataError(f"{path}: not a valid {name.rsplit('.', 1)[-1]} file ({why(exc)}).") from None
    except Exception as exc:  # pyarrow / parser errors of a damaged file
        raise DataError(f"{path}: cannot be read as {name.rsplit('.', 1)[-1]} ({type(exc).__name__}: "
                        f"{why(exc)}).") from None


def _column(df: pd.DataFrame, path: Path, key: str, columns: dict[str, str]) -> str:
    col = columns.get(key, key)
    if col not in df.columns:
        raise DataError(f"{path}: no column '{col}' (its columns: {', '.join(map(str, df.columns))}). Rename it, or "
                        f"name yours with -S custom.columns.{key}=<your column>.")
    return col


def _ids(s: pd.Series, path: Path, column: str) -> pd.Series:
    """Ids as strings, as written (not stripped; missing -> ''). Integers read from JSON/Parquet keep their
    integer text even where a missing value made pandas read the column as floats ('12', not '12.0'). A
    column of lists or records is the wrong type: one line naming the row."""
    if s.dtype == object:  # JSONL / Parquet cells of mixed kinds (CSV is read as strings)
        nested = s.map(lambda v: isinstance(v, (list, dict, tuple, np.ndarray))).to_numpy(dtype=bool)
        if nested.any():
            i = int(np.argmax(nested))
            raise DataError(f"{_row_name(path, i)}: column '{column}' holds {type(s.iloc[i]).__name__} "
                            f"{str(s.iloc[i])[:60]!r}, not an id. Ids are strings or whole numbers.")
    elif pd.api.types.is_float_dtype(s):
        v = s.to_numpy(dtype=float)
        fin = np.isfinite(v)
        if (v[fin] == np.floor(v[fin])).all():
            s = s.astype("Int64")
    return s.astype("string").fillna("")


# timestamps outside [1970, 2100) are bad rows: a typo of a digit, or a unit the column does not share
TIME_RANGE = (0, 4_102_444_800)


def to_seconds(values: pd.Series) -> tuple[np.ndarray, np.ndarray, str]:
    """Timestamps as int64 seconds, a mask of the unparseable or out-of-range ones (before 1970 or from
    2100), and the unit found: `seconds`, `milliseconds` (the column's median above 1e11: later than 5138 in
    seconds, after 1973 in ms; one outlier does not rescale the column), `ISO-8601` (strings) or `datetime`
    (a Parquet timestamp column). Booleans are not timestamps."""
    epoch = pd.Timestamp(0, tz="UTC")
    if pd.api.types.is_bool_dtype(values):
        return np.zeros(len(values), np.int64), np.ones(len(values), bool), "boolean"
    if pd.api.types.is_datetime64_any_dtype(values):
        when = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        unit = "datetime"
    else:
        nums = pd.to_numeric(values, errors="coerce")
        if nums.notna().mean() >= 0.5:  # numbers (a few bad ones are bad rows, not another unit)
            f = nums.to_numpy(dtype=float)
            ms = bool(np.nanmedian(f[np.isfinite(f)]) > 1e11) if np.isfinite(f).any() else False
            secs = np.floor(f / (1000.0 if ms else 1.0))
            bad = ~np.isfinite(secs) | (secs < TIME_RANGE[0]) | (secs >= TIME_RANGE[1])
            return np.where(bad, 0, secs).astype(np.int64), bad, "milliseconds" if ms else "seconds"
        when = pd.to_datetime(values.astype("string"), utc=True, errors="coerce", format="ISO8601")
        unit = "ISO-8601"
    bad = when.isna().to_numpy().copy()
    secs = ((when.fillna(epoch) - epoch) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)  # any resolution
    bad |= (secs < TIME_RANGE[0]) | (secs >= TIME_RANGE[1])
    return np.where(bad, 0, secs).astype(np.int64), bad, unit


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


def _text(v):
    """A cell as item text: lists joined by spaces (Amazon 2023's `features`, `description`), dicts as
    `key: value; ...` (its `details`), anything else as read."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return " ".join(str(x).strip() for x in v if _present(x))
    if isinstance(v, dict):
        return "; ".join(f"{k}: {str(x).strip()}" for k, x in v.items() if _present(x))
    return v


def _present_value(v) -> bool:
    return _present(_text(v)) if isinstance(v, (list, tuple, np.ndarray, dict)) else _present(v)


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


def interactions_of(df: pd.DataFrame, path: Path, columns: dict[str, str], bad_records: str,
                    report: dict) -> tuple[pd.DataFrame, str]:
    """The interactions of a read log (any source): ids as strings, timestamps as seconds, the row order kept
    as `line`; empty ids and unparseable timestamps stop with the row or are counted. Returns the unit found."""
    report["review_lines"] = len(df)
    if df.empty:
        raise DataError(f"{path}: no rows.")
    ucol, icol, tcol = (_column(df, path, k, columns) for k in REQUIRED)
    users, items = _ids(df[ucol], path, ucol), _ids(df[icol], path, icol)
    keep = _bad_rows((users.str.strip() == "").to_numpy(), path, ucol, "empty user id", "Every row needs a user.",
                     bad_records, report, "reviews_skipped_empty_id")
    keep &= _bad_rows((items.str.strip() == "").to_numpy(), path, icol, "empty item id", "Every row needs an item.",
                      bad_records, report, "reviews_skipped_empty_id")
    ts, bad_ts, unit = to_seconds(df[tcol])
    keep &= _bad_rows(bad_ts & keep, path, tcol, f"not a timestamp between 1970 and 2100 "
                      f"({df[tcol].iloc[int(np.argmax(bad_ts & keep))]!r}; the column reads as {unit})",
                      "Use seconds, milliseconds or ISO-8601 (2014-03-01T12:00:00Z).", bad_records, report,
                      "reviews_skipped_bad_timestamp")
    inter = pd.DataFrame({"user_id": users.to_numpy(dtype=object)[keep], "asin": items.to_numpy(dtype=object)[keep],
                          "ts": ts[keep], "line": np.flatnonzero(keep).astype(np.int64)})
    return inter, unit


def read_table_source(folder: Path, columns: dict[str, str], text_fields: tuple[str, ...],
                      bad_records: str = "error") -> Records:
    """Format `table`: interactions (+ items) of `folder` as Records."""
    report: dict[str, int] = {}
    ipath = _one(folder, "interactions", required=True)
    inter, unit = interactions_of(read_table(ipath), ipath, columns, bad_records, report)
    ppath = _one(folder, "items", required=False)
    items = None if ppath is None else read_table(ppath)
    metas = item_records(items, ppath or folder, columns, text_fields, set(inter["asin"]), bad_records, report)
    return Records(inter, metas, report, {"format": "table", "timestamps": unit}, str(ipath))


def item_records(df: pd.DataFrame | None, path: Path, columns: dict[str, str], text_fields: tuple[str, ...],
                 wanted: set[str], bad_records: str, report: dict, split_path=None) -> dict[str, dict]:
    """Per item of the log: its text fields and category path from the items table `df` (read from `path`).
    With no items table every item gets an empty record (no text, no tags; counted in the summary); an item
    the table lacks stops with one line, or (`bad_records: skip`) has no record, so `build` drops its
    interactions and counts them (`reviews_without_meta`). `split_path(value) -> list[str]` reads a
    categories cell (default `path_of`)."""
    if df is None:
        log.warning("%s: no items file: items have no text and no categories", path)
        return {a: {} for a in wanted}
    split_path = split_path or path_of
    report.setdefault("meta_lines", len(df))
    icol = _column(df, path, "item_id", columns)
    ccol = columns.get("categories", "categories")
    fields = [f for f in text_fields if f != "categories"]
    missing = [f for f in fields if columns.get(f, f) not in df.columns]
    if missing and len(missing) == len(fields) and ccol not in df.columns:
        raise DataError(f"{path}: none of the text columns {', '.join(fields)} (preprocess.text_fields) nor "
                        f"'{ccol}' is a column (its columns: {', '.join(map(str, df.columns))}). Name yours with "
                        "-S preprocess.text_fields=[...].")
    if missing:  # said, and counted in the summary: a misspelt field must not vanish quietly
        log.warning("%s: preprocess.text_fields %s are not columns (its columns: %s); the item text is made of "
                    "the others", path, ", ".join(missing), ", ".join(map(str, df.columns)))
        report["text_fields_not_in_items"] = len(missing)
    ids = _ids(df[icol], path, icol)
    keep = _bad_rows((ids.str.strip() == "").to_numpy(), path, icol, "empty item id", "Every row needs an item.", bad_records,
                     report, "meta_skipped_empty_id")
    dup = ids.duplicated(keep="first").to_numpy() & keep
    keep &= _bad_rows(dup, path, icol, f"item {ids.iloc[int(np.argmax(dup))]!r} appears twice",
                      "Keep one row per item.", bad_records, report, "meta_skipped_duplicate_item")
    df, ids = df[keep], ids[keep]
    inlog = ids.isin(wanted).to_numpy()
    df, ids = df[inlog], ids[inlog]
    if len(ids) < len(wanted):  # items of the log that the items table lacks
        lacking = sorted(wanted.difference(ids.to_numpy(dtype=object)))
        if bad_records == "error":
            raise DataError(f"{path}: {len(lacking):,} items of the log have no row (first: {lacking[0]!r}). Add "
                            "them, or set `preprocess.bad_records: skip` to drop their interactions (counted).")
    present = [f for f in fields if columns.get(f, f) in df.columns]
    cols = {f: df[columns.get(f, f)].to_numpy(dtype=object) for f in present}
    cats = df[ccol].to_numpy(dtype=object) if ccol in df.columns else None
    out: dict[str, dict] = {}
    for j, a in enumerate(ids.to_numpy(dtype=object)):
        rec = {f: _text(v[j]) for f, v in cols.items() if _present_value(v[j])}
        p = split_path(cats[j]) if cats is not None else []
        rec["categories"] = [[ROOT, *p]] if p else []
        out[a] = rec
    return out


def read_custom(folder: str | Path, fmt: str, columns: dict[str, str], text_fields: tuple[str, ...],
                bad_records: str = "error", seq_separator: str = " ") -> Records:
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
    if fmt == "recbole":
        return read_recbole_source(folder, columns, text_fields, bad_records, seq_separator)
    from .amazon2023 import read_amazon2023_source
    return read_amazon2023_source(folder, columns, text_fields, bad_records)


# ------------------------------------------------------------------------------------------ RecBole

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def read_atomic(path: Path, bad_records: str = "error") -> pd.DataFrame:
    """A RecBole atomic file (`.inter`, `.item`): tab-separated, a header of `name:type` fields (types
    token, token_seq, float, float_seq). Columns come back named without their types, every value a string;
    float columns are checked to hold numbers (else one line naming the row and column; under
    `bad_records: skip` not checked here: rows with a bad timestamp are counted and skipped later)."""
    df = read_table(path, sep="\t")
    names, floats, types = [], [], {}
    for col in map(str, df.columns):
        name, _, typ = col.rpartition(":")
        if not name or typ not in RECBOLE_TYPES:
            raise DataError(f"{path}:1: header field {col!r} has no RecBole type. Atomic files name each column "
                            f"name:type with type one of {', '.join(RECBOLE_TYPES)} (e.g. user_id:token).")
        names.append(name)
        types[name] = typ
        if typ == "float":
            floats.append(name)
    if len(set(names)) != len(names):
        raise DataError(f"{path}:1: a column name appears twice in the header ({', '.join(names)}).")
    df.columns = names
    for name in floats if bad_records == "error" else ():  # skip: a bad timestamp is counted by interactions_of
        vals = df[name]
        wrong = (pd.to_numeric(vals, errors="coerce").isna() & (vals.str.strip() != "")).to_numpy()
        if wrong.any():
            i = int(np.argmax(wrong))
            raise DataError(f"{_row_name(path, i)}: column '{name}' is typed float but holds {vals.iloc[i]!r}. "
                            "Fix the value, or type the column token.")
    df.attrs["types"] = types
    return df


def read_recbole_source(folder: Path, columns: dict[str, str], text_fields: tuple[str, ...],
                        bad_records: str = "error", seq_separator: str = " ") -> Records:
    """Format `recbole`: `<name>.inter` (+ `<name>.item`) in RecBole's atomic format as Records.

    Categories (`.item`): a value with `>` is a path `A > B > C`; otherwise a `token_seq` value is the path's
    names separated by `custom.seq_separator` (RecBole's `seq_separator`, a space by default) and a `token`
    value is a one-level path. Text columns are taken as written (a `token_seq` keeps its separators)."""
    inters = _atomic(folder, ".inter")
    if len(inters) != 1:
        raise DataError(f"{folder}: {'no' if not inters else 'several'} RecBole .inter files"
                        f"{'' if not inters else ' (' + ', '.join(p.name for p in inters) + ')'}; keep one.")
    ipath = inters[0]
    report: dict[str, int] = {}
    inter, unit = interactions_of(read_atomic(ipath, bad_records), ipath, columns, bad_records, report)
    stem = ipath.name.removesuffix(".gz").removesuffix(".inter")
    items = [p for p in _atomic(folder, ".item") if p.name.removesuffix(".gz").removesuffix(".item") == stem]
    others = [p.name for p in _atomic(folder, ".item") if p not in items]
    if others:
        raise DataError(f"{folder}: {', '.join(others)} does not belong to {ipath.name}; name it {stem}.item.")
    df = read_atomic(items[0], bad_records) if items else None
    ccol = columns.get("categories", "categories")
    seq = df is not None and df.attrs.get("types", {}).get(ccol) == "token_seq"

    def split(value):
        if isinstance(value, str) and seq and ">" not in value:
            return [x.strip() for x in value.split(seq_separator) if x.strip()]
        return path_of(value)

    metas = item_records(df, items[0] if items else folder, columns, text_fields, set(inter["asin"]), bad_records,
                         report, split)
    return Records(inter, metas, report, {"format": "recbole", "timestamps": unit}, str(ipath))
