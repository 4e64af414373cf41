from __future__ import annotations

import csv
import io
import json
import re
import sys
import time
from pathlib import Path

import typer

from pipeline.recommender.recommend import Query, QueryError, Recommender, ranking_settings

from .common import COLLAB_OPT, DATA_OPT, FEATURES_OPT, PARAMS_OPT, SET_OPT, SID_OPT, params, stage


def split_list(s: str) -> list[str]:
    """A list given on one line: items separated by commas, spaces, `;` or `|`; or a JSON list of strings
    (`["item é 1", "a, b"]`), for ids that hold those characters (your own data)."""
    s = s.strip()
    if s.startswith("["):
        try:
            vals = json.loads(s)
        except ValueError as exc:
            raise QueryError(f"not a JSON list ({exc}): {s[:100]!r}") from None
        if not isinstance(vals, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in vals):
            raise QueryError(f"a JSON list of ids must hold strings: {s[:100]!r}")
        return [str(v) for v in vals]
    return re.split(r"[\s,;|]+", s) if s else []


def _times(raw, where: str) -> list[int] | None:
    if raw is None or raw == "" or raw == []:
        return None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, (list, str)):
        raise QueryError(f"{where}: `times` must be a list of unix seconds, got {type(raw).__name__}.")
    vals = raw if isinstance(raw, list) else split_list(raw)
    try:
        if any(isinstance(v, bool) or not isinstance(v, (int, float, str)) for v in vals):
            raise TypeError
        out = [int(float(v)) for v in vals]
    except (TypeError, ValueError, OverflowError):
        raise QueryError(f"{where}: timestamps must be unix seconds, got {str(raw)[:100]!r}") from None
    if any(not 0 <= t < 2**40 for t in out):
        raise QueryError(f"{where}: timestamps must be unix seconds from 0 (1970) on, got {str(raw)[:100]!r}")
    return out


def _text(path: Path) -> str:
    """The file as UTF-8 text (a BOM is dropped); anything else is a one-line error naming the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise QueryError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                         "save the queries as UTF-8 JSON lines or CSV.") from None


def read_queries(path: Path) -> list[Query | QueryError]:
    """Queries from a JSON-lines file ({"user": ID} or {"history": [ITEM_ID, ...], "times": [...], "id": ...})
    or a CSV file (columns `user` or `history`, optional `times`, `id`; lists separated by spaces,
    `;` or `|`). A malformed line becomes a QueryError in place, so that it can be skipped and counted;
    a file that is not UTF-8 text is one QueryError naming the line."""
    if not path.is_file():
        raise QueryError(f"{path}: input file not found.")
    text = _text(path)
    out: list[Query | QueryError] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            fields = reader.fieldnames
            if not fields or not ({"user", "history"} & set(fields)):
                raise QueryError(f"{path}: a CSV needs a header with a `user` or a `history` column (got {fields}).")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                try:
                    if None in row:  # more cells than header columns
                        raise QueryError(f"{where}: {len(fields) + len(row[None])} cells for {len(fields)} columns.")
                    out.append(_query(row, where))
                except QueryError as exc:
                    out.append(exc)
        except csv.Error as exc:
            raise QueryError(f"{path}:{reader.line_num}: not a readable CSV ({exc}); expected a header line "
                             "`id,history,times` and one query per line.") from None
        return out
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            out.append(_query(obj, where))
        except (ValueError, RecursionError) as exc:
            msg = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
            out.append(QueryError(f"{where}: malformed line ({msg[:200]}); expected e.g. "
                                  '{"history": ["ITEM_ID1", "ITEM_ID2"]} or {"user": "USER_ID"}'))
        except QueryError as exc:
            out.append(exc)
    return out


def _query(obj: dict, where: str) -> Query:
    """One query from a parsed line; a field of the wrong type is a QueryError naming it."""
    qid = obj.get("id")
    if qid is not None and not isinstance(qid, (str, int)):
        raise QueryError(f"{where}: `id` must be a string or a number, got {type(qid).__name__}.")
    label = f"{where}" + (f" (id {qid})" if qid not in (None, "") else "")
    user = obj.get("user")
    if user not in (None, ""):
        if not isinstance(user, (str, int)) or isinstance(user, bool):
            raise QueryError(f"{where}: `user` must be a user id (a string), got {type(user).__name__}.")
        return Query([], None, label, user=str(user))
    hist = obj.get("history")
    if hist is None:
        raise QueryError(f"{where}: neither `user` nor `history` given.")
    if isinstance(hist, str):
        hist = split_list(hist)
    elif isinstance(hist, list) and all(isinstance(h, str) for h in hist):
        hist = list(hist)
    else:
        raise QueryError(f"{where}: `history` must be a list of item id strings (or one string of ids), got "
                         f"{type(hist).__name__}{' with non-string items' if isinstance(hist, list) else ''}.")
    return Query(hist, _times(obj.get("times"), where), label)


@stage
def recommend_cmd(
    users: str = typer.Option(None, "--users", help="ids of dataset users, comma-separated or a JSON list"),
    history: str = typer.Option(None, "--history", help="one history: item ids oldest first, comma-separated or "
                                "a JSON list ('[\"id, with comma\", \"id 2\"]')"),
    times: str = typer.Option(None, "--times", help="unix seconds per --history item (default: same day)"),
    input_file: Path = typer.Option(None, "--input", help="queries: JSON lines or CSV (see --help of the docs)"),
    k: int = typer.Option(10, "--k", help="items per query"),
    beam: int = typer.Option(None, "--beam", help="beam width (>= k; default: evaluate.beam_size, 30)"),
    batch: str = typer.Option("auto", "--batch", help="queries per batch: a count, or auto (48 on CPU, 1024 on CUDA)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    on_error: str = typer.Option("error", "--on-error", help="error: stop at the first bad query | skip: count it"),
    truncate: bool = typer.Option(False, "--truncate", help="keep the most recent items of too long histories"),
    timing: bool = typer.Option(False, "--timing", help="also time one query at batch size 1"),
    out: Path = typer.Option(None, "--out", help="write the JSON lines here instead of stdout"),
    model_dir: Path = typer.Option(Path("models/recommender"), "--model", help="train output folder"),
    data: Path = DATA_OPT,
    features: Path = FEATURES_OPT,
    collab: Path = COLLAB_OPT,
    sid: Path = SID_OPT,
    params_file: Path = PARAMS_OPT,
    set_: list[str] = SET_OPT,
):
    """Top-K items for dataset users or for histories of item ids, from the trained pipeline (JSON lines)."""
    if on_error not in ("error", "skip"):
        raise QueryError(f"--on-error must be 'error' or 'skip', got '{on_error}'")
    queries: list[Query | QueryError] = []
    if users:
        queries += [Query([], None, f"--users {u}", user=u) for u in split_list(users)]
    if history is not None:
        queries.append(Query(split_list(history), _times(times, "--times"), "--history"))
    if input_file is not None:
        queries += read_queries(input_file)
    if not queries:
        raise QueryError("nothing to recommend for: give --users, --history or --input (see prism recommend --help).")
    bad = [q for q in queries if isinstance(q, QueryError)]
    if bad and on_error == "error":
        raise bad[0]
    # rank as `prism evaluate` does: its beam, ranking precision and normalisation (params.yaml when present)
    rs = ranking_settings(params(params_file, set_) if params_file.is_file() or set_ else None)
    beam = rs["beam"] if beam is None else beam
    rec = Recommender.load(model_dir, data, features, collab, sid, device, amp=rs["amp"], norm=rs["norm"])
    rec.skipped += [str(b) for b in bad]
    t0 = time.time()
    results = rec.recommend_queries([q for q in queries if isinstance(q, Query)], k, beam, batch, on_error,
                                    truncate, progress="recommend")
    wall = time.time() - t0
    fh = open(out, "w", encoding="utf-8") if out else sys.stdout
    try:
        for r in results:
            q = r.query
            rec_line = {"query": q.label, **({"user": q.user} if q.user else {"history": q.history}), "items": r.items}
            fh.write(json.dumps(rec_line, ensure_ascii=False) + "\n")
    finally:
        if out:
            fh.close()
    line = (f"recommend: {len(results)} queries answered, {len(rec.skipped)} skipped, top {k} (beam {beam}) on "
            f"{rec.device} in {wall:.2f}s")
    if timing and results:
        line += f"; batch-1 latency {rec.latency_ms(results[0].query, k, beam):.1f} ms/query"
    for msg in rec.skipped[:20]:
        print(f"prism recommend: skipped {msg}", file=sys.stderr)
    if len(rec.skipped) > 20:
        print(f"prism recommend: … and {len(rec.skipped) - 20} more skipped", file=sys.stderr)
    print(line + (f" -> {out}" if out else ""), file=sys.stdout if out else sys.stderr)
