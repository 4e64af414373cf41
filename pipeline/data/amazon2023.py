"""Amazon Reviews 2023 (Hou et al., 2024; https://amazon-reviews-2023.github.io), the data most recent
generative-recommendation papers use: `dataset: custom` with `custom.format: amazon2023` reads the layout from
`custom.dir`, `dataset: amazon23:<Category>` (e.g. `amazon23:All_Beauty`) fetches it by name into
`<raw_dir>/amazon23/` where the network allows. These are other datasets than the paper's Amazon 2014 sets.

Layout, per category: `<Category>.jsonl[.gz]`, one review per line (`user_id`, `parent_asin` = the item,
`timestamp` in milliseconds; other fields ignored), and `meta_<Category>.jsonl[.gz]`, one item per line
(`parent_asin`, `title`, `categories` = one flat path, `store`, `features` and `description` = lists of
strings, `details` = a dict, `price`, ...; every field can form the item text through
`preprocess.text_fields`, lists joined by spaces, dicts as `key: value; ...`).

Reviews are read by pyarrow's JSON reader with an explicit schema (three columns, the rest skipped, no
Python loop per line); meta by pandas in chunks, keeping the items of the log. A damaged file (a line that is
not JSON, a gzip cut short) is re-scanned line by line to name the line, or its bad lines are counted and
skipped under `preprocess.bad_records: skip`.
"""

from __future__ import annotations

import gzip
import json
import urllib.error
import zlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.json as pj

from ..choices import AMAZON2023
from ..utils import DataError, log
from .amazon import download, verify_checksum
from .custom import Records, _amazon2023_pairs, interactions_of, item_records, why

BASE_URL = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw/"
REVIEW_COLUMNS = {"user_id": "user_id", "item_id": "parent_asin", "timestamp": "timestamp"}
ITEM_COLUMNS = {"item_id": "parent_asin", "categories": "categories"}
PREFIX = "amazon23:"


def category_of(dataset: str) -> str:
    """`amazon23:All_Beauty` -> `All_Beauty` (a category of the 2023 release, pipeline/choices.py)."""
    cat = dataset.removeprefix(PREFIX)
    if not dataset.startswith(PREFIX) or cat not in AMAZON2023:
        raise DataError(f"dataset {dataset!r}: not an Amazon Reviews 2023 category; use amazon23:<Category> with "
                        f"one of {', '.join(AMAZON2023)}.")
    return cat


def ensure_amazon2023(raw_dir: str | Path, category: str, allow_download: bool = True, base_url: str = BASE_URL,
                      timeout: float = 15.0) -> Path:
    """The folder `<raw_dir>/amazon23/` holding `<Category>.jsonl.gz` and `meta_<Category>.jsonl.gz`, fetched
    when missing. The release publishes no checksums: a download records the SHA-256 of what it fetched in
    `<file>.sha256` and every later run checks the file against it (as for the 2014 files)."""
    folder = Path(raw_dir) / "amazon23"
    names = {"review_categories": f"{category}.jsonl.gz", "meta_categories": f"meta_{category}.jsonl.gz"}
    missing = {sub: n for sub, n in names.items()
               if not (folder / n).is_file() and not (folder / n.removesuffix(".gz")).is_file()}
    if missing:
        hint = (f"Put {' and '.join(names.values())} (from {base_url}review_categories/ and meta_categories/) in "
                f"{folder}/, or point raw_dir at the folder above it.")
        if not allow_download:
            raise DataError(f"Amazon Reviews 2023 files for {category} not found and download=false. {hint}")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for sub, name in missing.items():
                download(f"{base_url}{sub}/{name}", folder / name, timeout=timeout)
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise DataError(f"Amazon Reviews 2023 files for {category} are missing and the download from {base_url} "
                            f"failed ({exc}). Offline? {hint}") from None
    for name in names.values():
        path = folder / name if (folder / name).is_file() else folder / name.removesuffix(".gz")
        verify_checksum(path)
    return folder


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _scan(path: Path, fields: tuple[str, ...], bad_records: str, report: dict, code: str,
          keep=None) -> pd.DataFrame:
    """Line by line (the damaged-file path only): the first bad line stops with its number (mode error),
    or bad lines are counted (mode skip). A gzip cut short always stops."""
    rows, bad = [], 0
    try:
        with _open(path) as fh:
            for i, raw in enumerate(fh, 1):
                try:
                    rec = json.loads(raw.decode("utf-8"))
                    if not isinstance(rec, dict):
                        raise ValueError("not a JSON object")
                except (ValueError, UnicodeDecodeError) as exc:
                    if bad_records == "error":
                        what = ("not UTF-8 text" if isinstance(exc, UnicodeDecodeError)
                                else f"not a JSON object ({why(exc, 80)})")
                        raise DataError(f"{path}:{i}: {what}. Fix or drop the line, or set "
                                        "`preprocess.bad_records: skip` to count and skip such lines.") from None
                    bad += 1
                    continue
                if keep is None or keep(rec):
                    rows.append({f: rec.get(f) for f in fields} if fields else rec)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be read ({why(exc)}); is it cut short? Copy it again.") from None
    if bad:
        report[code] = report.get(code, 0) + bad
    return pd.DataFrame(rows, columns=list(fields) if fields else None)


def read_reviews(path: Path, bad_records: str, report: dict) -> pd.DataFrame:
    """The review file's user_id, parent_asin and timestamp columns, in file order."""
    fields = tuple(REVIEW_COLUMNS.values())
    schema = pa.schema([("user_id", pa.string()), ("parent_asin", pa.string()), ("timestamp", pa.int64())])
    try:
        table = pj.read_json(path, read_options=pj.ReadOptions(block_size=16 << 20),
                             parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"))
        return table.to_pandas()
    except (pa.ArrowInvalid, OSError, EOFError, zlib.error) as exc:  # damaged: find the line, or count and skip
        log.info("%s: %s; reading line by line", path, why(exc))
        return _scan(path, fields, bad_records, report, "reviews_skipped_bad_json")


def read_meta(path: Path, wanted: set[str], bad_records: str, report: dict, chunk: int = 50_000) -> pd.DataFrame:
    """The meta records of the items in `wanted` (every field kept), read in chunks."""
    parts, lines = [], 0
    try:
        for part in pd.read_json(path, lines=True, dtype=False, chunksize=chunk):
            lines += len(part)
            if "parent_asin" not in part.columns:
                raise DataError(f"{path}: no field 'parent_asin' (its fields: {', '.join(map(str, part.columns))}). "
                                "Is it a meta file of Amazon Reviews 2023?")
            parts.append(part[part["parent_asin"].astype("string").isin(wanted).fillna(False).to_numpy()])
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["parent_asin"])
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zlib.error) as exc:
        log.info("%s: %s; reading line by line", path, why(exc))
        df = _scan(path, (), bad_records, report, "meta_skipped_bad_json",
                   keep=lambda r: str(r.get("parent_asin")) in wanted)
        lines = None
    report["meta_lines"] = lines if lines is not None else len(df)
    return df


def read_amazon2023_source(folder: Path, columns: dict[str, str], text_fields: tuple[str, ...],
                           bad_records: str = "error", category: str | None = None) -> Records:
    """Format `amazon2023`: one category's reviews and meta in `folder` as Records (`category` picks the pair
    where the folder holds several, as `<raw_dir>/amazon23/` does)."""
    pairs = _amazon2023_pairs(folder)
    if category is not None:
        pairs = [p for p in pairs if p[0].name.removesuffix(".gz") == f"{category}.jsonl"]
    if len(pairs) != 1:
        what = "no" if not pairs else f"several ({', '.join(p[0].name for p in pairs)})"
        raise DataError(f"{folder}: {what} Amazon Reviews 2023 file pairs <Category>.jsonl[.gz] + "
                        "meta_<Category>.jsonl[.gz]; keep one pair.")
    rpath, mpath = pairs[0]
    report: dict[str, int] = {}
    inter, unit = interactions_of(read_reviews(rpath, bad_records, report), rpath, REVIEW_COLUMNS, bad_records, report)
    meta = read_meta(mpath, set(inter["asin"]), bad_records, report)
    if "parent_asin" not in meta.columns:  # every line was skipped
        raise DataError(f"{mpath}: no readable item record ({report.get('meta_skipped_bad_json', 0)} lines skipped). "
                        "Copy the file again.")
    meta = meta.rename(columns={"parent_asin": "item_id"})
    metas = item_records(meta, mpath, {"item_id": "item_id", "categories": "categories"}, text_fields,
                         set(inter["asin"]), bad_records, report)
    return Records(inter, metas, report, {"format": "amazon2023", "timestamps": unit}, str(rpath))

