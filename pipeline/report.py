"""Results tables the way papers report them: one row per set of params (a variant, an ablation, a sweep
point), Recall/NDCG@{5,10,20} as mean ± sd
over seeds, the paper's figures beside them when known (`prism report`).

Input: `dvc exp show --json` (DVC 3: a list of baseline revisions, each with its experiments). Every
experiment (and the committed params, when they have metrics) is one run; runs are grouped into rows
by the params that differ from the committed params, `seed` aside, so
`dvc exp run --queue -S seed=1 -S hsa=false` lands in the row "hsa=false" with its other seeds.

Below PRISM's rows come the reference models of the same runs: SASRec (`metrics/baseline.json`, stage
`baseline`) and the popularity floor (`test_popularity_baseline` of `metrics/eval.json`). Their rows are
grouped by the params *their* stages read (dvc.yaml: the stage and the stages upstream of it), so a sweep
over PRISM's params, which reruns nothing of SASRec's, gives one SASRec row and not one per experiment.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import dag
from pipeline import variants as presets
from pipeline.config import yaml12_load
from pipeline.utils import DataError

METRICS = ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20")
HEAD = ("R@5", "R@10", "R@20", "N@5", "N@10", "N@20")
EVAL_FILE, BASELINE_FILE = "metrics/eval.json", "metrics/baseline.json"

# Beauty, test split (paper Table 2 / Table 4); None where the paper gives no figure
PAPER = {
    "beauty": {
        "PRISM": {"recall@10": 0.0713, "recall@20": 0.1030, "ndcg@10": 0.0387, "ndcg@20": 0.0467},
        "TIGER": {"recall@10": 0.0588, "recall@20": 0.0857, "ndcg@10": 0.0309, "ndcg@20": 0.0377},
        "w/o acd": {"recall@10": 0.0691, "recall@20": 0.1029, "ndcg@10": 0.0375},
        "w/o hsa": {"recall@10": 0.0652, "recall@20": 0.1001, "ndcg@10": 0.0341},
        "w/o dhr": {"recall@10": 0.0688, "recall@20": 0.1015, "ndcg@10": 0.0368},
        "w/o dsi": {"recall@10": 0.0675, "recall@20": 0.0968, "ndcg@10": 0.0366},
        "w/o ssa": {"recall@10": 0.0695, "recall@20": 0.1021, "ndcg@10": 0.0379},
        "w/o ats": {"recall@10": 0.0682, "recall@20": 0.1007, "ndcg@10": 0.0363},
    }
}
# Reference models, test split: the PRISM paper's Table 2 (all four datasets) and, for SASRec on Beauty, the
# careful re-run with a full/sampled-softmax CE loss (independent benchmark, ../shared/notes/reference-facts.md)
_T2 = {  # dataset: {model: (R@10, R@20, N@10, N@20)}
    "beauty": {"SASRec": (0.0489, 0.0769, 0.0211, 0.0282), "TIGER": (0.0588, 0.0857, 0.0309, 0.0377)},
    "sports": {"SASRec": (0.0295, 0.0471, 0.0126, 0.0170), "TIGER": (0.0401, 0.0617, 0.0210, 0.0264)},
    "toys": {"SASRec": (0.0567, 0.0831, 0.0247, 0.0313), "TIGER": (0.0574, 0.0868, 0.0304, 0.0378)},
    "cds": {"SASRec": (0.0479, 0.0790, 0.0208, 0.0286), "TIGER": (0.0580, 0.0863, 0.0308, 0.0380)},
}
for _ds, _models in _T2.items():
    for _m, (_r10, _r20, _n10, _n20) in _models.items():
        PAPER.setdefault(_ds, {}).setdefault(_m, {"recall@10": _r10, "recall@20": _r20, "ndcg@10": _n10, "ndcg@20": _n20})
REFERENCE = {"beauty": {"SASRec": ("careful re-run, full CE", {"recall@10": 0.0921, "ndcg@10": 0.0531})}}


@dataclass
class Run:
    name: str
    params: dict[str, Any]
    metrics: dict[str, Any]  # metrics/eval.json (PRISM or TIGER); {} when the run has none
    is_exp: bool = True  # a DVC experiment (False: the committed params' own metrics)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # every metrics file of the run


@dataclass
class Row:
    label: str
    diff: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    common: dict[str, Any] = field(default_factory=dict)  # settings shared by every experiment (not in label)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _file_data(section: dict | None, name: str) -> dict:
    entry = (section or {}).get(name) or {}
    return entry.get("data") or {}


def runs_from_exp_show(obj: list, params_file: str = "params.yaml",
                       metrics_file: str = EVAL_FILE) -> tuple[dict[str, Any], list[Run]]:
    """The baseline commit's params and every finished run (the baseline too, if it has metrics) with
    `metrics_file`'s metrics; `all_runs_from_exp_show` also keeps runs with other metrics files only."""
    base, runs = all_runs_from_exp_show(obj, params_file, metrics_file)
    return base, [r for r in runs if r.metrics]


def all_runs_from_exp_show(obj: list, params_file: str = "params.yaml",
                           metrics_file: str = EVAL_FILE) -> tuple[dict[str, Any], list[Run]]:
    base_params: dict[str, Any] | None = None
    runs: list[Run] = []

    def run(name: str, data: dict, is_exp: bool) -> Run | None:
        files = {f: _file_data(data.get("metrics"), f) for f in (data.get("metrics") or {})}
        files = {f: m for f, m in files.items() if m}
        if not files:
            return None
        params = presets.resolved(flatten(_file_data(data.get("params"), params_file)))
        return Run(name, params, files.get(metrics_file, {}), is_exp, files)

    for entry in obj:
        if entry.get("rev") == "workspace":
            continue  # the workspace is a copy of HEAD or of an applied experiment
        data = entry.get("data") or {}
        if base_params is None:
            base_params = presets.resolved(flatten(_file_data(data.get("params"), params_file)))
        r = run(entry.get("name") or entry["rev"][:7], data, False)
        if r:
            runs.append(r)
        for rng in entry.get("experiments") or []:
            state = ((rng.get("executor") or {}).get("state")) or "success"
            if state != "success" or not rng.get("revs"):
                continue
            exp = rng["revs"][0]
            r = run(rng.get("name") or exp.get("name") or exp["rev"][:7], exp.get("data") or {}, True)
            if r:
                runs.append(r)
    if base_params is None:
        raise DataError("dvc exp show --json: no baseline commit found (is this a DVC repo with commits?)")
    return base_params, runs


def runs_from_dirs(dirs: list[Path], params_file: Path = Path("params.yaml")) -> tuple[dict[str, Any], list[Run]]:
    """Runs from run folders (`prism dag --dir`: each holds its params.yaml and metrics/*.json, as a DVC
    experiment's workspace does), against `params_file`'s params as the baseline. Every folder is a run
    (is_exp: the baseline is not a run of its own), named by the folder."""
    def load(path: Path) -> dict[str, Any]:
        try:
            flat = flatten(yaml12_load(path.read_text()) or {})
            if "raw_dir" in flat:  # as `prism dag --dir` writes it: absolute, from where it ran
                flat["raw_dir"] = os.path.abspath(Path(flat["raw_dir"]).expanduser())
            return presets.resolved(flat)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read the run's params ({exc}); is it a `prism dag --dir` folder?") from None

    runs = []
    for d in dirs:
        files = metrics_files(d)
        runs.append(Run(d.name, load(d / "params.yaml"), files.get(EVAL_FILE, {}), True, files))
    return load(params_file), runs


def metrics_files(folder: Path) -> dict[str, dict[str, Any]]:
    """A run folder's metrics/*.json by their dvc.yaml path ("metrics/eval.json": {...})."""
    files = {}
    for f in sorted((folder / "metrics").glob("*.json")):
        try:
            files[f"metrics/{f.name}"] = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{f}: unreadable metrics ({exc}); rerun the stage that writes it.") from None
    return files


def _reads(key: str, keys: tuple[str, ...]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)


# reference model -> the dvc.yaml stage whose result it is (the params of it and its upstream decide it)
REFERENCE_STAGES = {"SASRec": "baseline", "popularity": "preprocess"}


def _key(d: dict[str, Any]) -> tuple:
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in d.items()))


def reference_rows(base: dict[str, Any], runs: list[Run], dvc: dict, ignore: tuple[str, ...] = ("seed",),
                       split: str = "test") -> list[Row]:
    """SASRec (metrics/baseline.json) and popularity (metrics/eval.json's, else baseline.json's,
    `<split>_popularity_baseline`) rows. Runs that agree on every param the model's stage and its upstream
    read in `dvc` (dvc.yaml; seed included) are one result, counted once."""
    out: list[Row] = []
    sources = {"SASRec": lambda r: r.files.get(BASELINE_FILE),
               "popularity": lambda r: _popularity(r, split)}
    for model, get in sources.items():
        rel = dag.param_keys(dvc, REFERENCE_STAGES[model])
        seen: set[tuple] = set()
        rows: dict[tuple, Row] = {}
        for r in runs:
            m = get(r)
            if not m:
                continue
            mine = {k: v for k, v in r.params.items() if _reads(k, rel)}
            ident = _key(mine)
            if ident in seen:
                continue  # the same stage result reached from another experiment
            seen.add(ident)
            diff = {k: v for k, v in mine.items() if k not in ignore and base.get(k) != v}
            key = _key(diff)
            if key not in rows:
                notes = [_kv(diff)] if diff else []
                if model == "SASRec" and (h := sasrec_history(r.params)) != r.params.get("preprocess.max_seq_len"):
                    notes.insert(0, f"history {h}")  # SASRec reads longer histories than PRISM's: say so
                rows[key] = Row(model + (f" ({', '.join(notes)})" if notes else ""), diff)
            rows[key].runs.append(Run(r.name, r.params, m, r.is_exp))
        out.extend(sorted(rows.values(), key=lambda v: (len(v.diff), v.label)))
    return out


def sasrec_history(params: dict[str, Any]) -> Any:
    """The history length SASRec read (`baseline.max_len`, `auto` = PRISM's `preprocess.max_seq_len`)."""
    h = params.get("baseline.max_len", "auto")
    return params.get("preprocess.max_seq_len") if h == "auto" else h


def _popularity(r: Run, split: str) -> dict | None:
    for f in (EVAL_FILE, BASELINE_FILE):
        m = (r.files.get(f) or {}).get(f"{split}_popularity_baseline")
        if m:
            return {split: m}
    return None


def group(base: dict[str, Any], runs: list[Run], ignore: tuple[str, ...] = ("seed",)) -> list[Row]:
    """Runs grouped into rows by the params that differ from the committed params (`seed` aside),
    each labelled by exactly those params (or its variant's name, pipeline/variants.py). Only when the
    commit itself has no run in the table are the settings every experiment shares stated once under
    it and left out of the labels (the row with none left is named by its variant, else "sweep default")."""
    rows_: dict[tuple, Row] = {}
    for r in runs:
        diff = {k: v for k, v in r.params.items() if k not in ignore and base.get(k) != v}
        diff.update({k: None for k in base if k not in r.params and k not in ignore})
        key = _key(diff)
        if key not in rows_:
            rows_[key] = Row(label(diff, base), diff)
        rows_[key].runs.append(r)
    exps = [v for v in rows_.values() if any(r.is_exp for r in v.runs)]
    if exps and not any(not r.is_exp for r in runs):
        common = {k: val for k, val in exps[0].diff.items()
                  if all(k in v.diff and v.diff[k] == val for v in exps[1:])}
        if common:
            for v in exps:
                v.diff = {k: val for k, val in v.diff.items() if k not in common}
                v.label = label(v.diff, {**base, **common}) if v.diff else _name({**base, **common})
                v.common = common
    return sorted(rows_.values(), key=lambda v: (bool(v.common), len(v.diff), v.label))


def label(diff: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    """The params that differ from the baseline row; a run whose switches are exactly another variant's
    than the baseline's is named by that variant ("TIGER", "TIGER (lambda1=0.4)"); the baseline row itself
    is "PRISM (committed params)" (not "baseline": SASRec is the baseline model of the table)."""
    base = base or {}
    if not diff:
        return _name(base, "{} (committed params)", "committed params")
    mine = presets.variant_of({**base, **diff})
    if mine and mine != presets.variant_of(base):
        rest = {k: v for k, v in diff.items() if k not in presets.SWITCHES}
        return presets.LABELS[mine] + (f" ({_kv(rest)})" if rest else "")
    return _kv(diff)


def _name(params: dict[str, Any], form: str = "{}", default: str = "sweep default") -> str:
    """A row named by the variant of its params (`form` around the name: "PRISM"), else `default`."""
    name = presets.LABELS.get(presets.variant_of(params) or "")
    return form.format(name) if name else default


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={'true' if v is True else 'false' if v is False else v}" for k, v in sorted(d.items()))


# params that say where and how a run happens, not what it is: a row changing only these still faces the paper
SETUP_KEYS = ("dataset", "raw_dir", "download", "device", "embed_model")


def paper_row(v: Row, base: dict[str, Any]) -> dict | None:
    """The paper's figure for a row: by its variant (PRISM, TIGER) or PRISM with one switch off (Table 4),
    when nothing else differs from the commit but where the data is (`SETUP_KEYS`)."""
    params = {**base, **v.runs[0].params}
    table = PAPER.get(str(params.get("dataset")))
    if not table:
        return None
    if v.label.startswith(tuple(REFERENCE_STAGES)):
        return table.get("SASRec") if v.label == "SASRec" else None
    if any(k not in presets.SWITCHES and k not in SETUP_KEYS for k in {**v.common, **v.diff}):
        return None  # another recipe (the settings every run shares count too)
    name = presets.variant_of(params)
    if name == "prism":
        return table["PRISM"]
    if name == "tiger":
        return table["TIGER"]
    off = [k for k in presets.SWITCHES[1:] if params.get(k) is False]
    if params.get("tokenizer") == "prism" and len(off) == 1 and f"w/o {off[0]}" in table:
        return table[f"w/o {off[0]}"]
    return None


def mean_sd(xs: list[float], nd: int = 4) -> str:
    if not xs:
        return "–"
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return f"{m:.{nd}f}"
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return f"{m:.{nd}f} ± {sd:.{nd}f}"


# `--details`: how each row was trained and how fast it serves (header, metrics file, dotted key)
TRAIN_FILE = "metrics/train.json"
DETAILS = (("valid N@20", EVAL_FILE, "valid.ndcg@20"), ("epochs", TRAIN_FILE, "epochs"),
           ("best epoch", TRAIN_FILE, "best_epoch"), ("stopped", TRAIN_FILE, "stopped"),
           ("train s", TRAIN_FILE, "train_wall_s"), ("samples/s", TRAIN_FILE, "last_samples_per_s"),
           ("users/s", EVAL_FILE, "test_users_per_s"), ("ms/user b1", EVAL_FILE, "latency_ms_batch1"))


def _detail(runs: list[Run], file: str, key: str) -> str:
    vals = []
    for r in runs:
        node: Any = r.files.get(file) or {}
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            vals.append(node)
    if not vals or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
        return ", ".join(sorted({str(x) for x in vals})) or "–"
    m = sum(vals) / len(vals)
    nd = 4 if key.startswith(("valid.", "test.")) else 0 if all(isinstance(x, int) for x in vals) or abs(m) >= 100 else 1
    return mean_sd(vals, nd)


def table(base: dict[str, Any], rows: list[Row], split: str = "test",
          references: list[Row] = (), details: bool = False) -> str:
    """PRISM's rows, then the reference models' rows (`reference_rows`), each followed by the
    published figures for its dataset when known (test split only). `details`: also each row's training
    and serving facts (`DETAILS`) from its runs' other metrics files. The one results table of the project:
    `prism report` over DVC experiments or run folders, the GPU run and the Beauty benchmark."""
    extra = DETAILS if details else ()
    lines = [f"| variant | seeds | {' | '.join(HEAD + tuple(h for h, _, _ in extra))} |",
             "|---|---|" + "---|" * (len(HEAD) + len(extra))]
    pad = " |" * len(extra)
    for v in [*rows, *references]:
        seeds = sorted({r.params.get("seed") for r in v.runs}, key=str)
        vals = [mean_sd([float(r.metrics[split][m]) for r in v.runs if m in r.metrics.get(split, {})])
                for m in METRICS] + [_detail(v.runs, f, k) for _, f, k in extra]
        lines.append(f"| {v.label} | {len(v.runs)} ({', '.join(map(str, seeds))}) | {' | '.join(vals)} |")
        paper = paper_row(v, base)
        if paper and split == "test":
            lines.append(f"| ↳ paper ({v.runs[0].params.get('dataset', base.get('dataset'))}) | | "
                         + " | ".join(f"{paper[m]:.4f}" if m in paper else "–" for m in METRICS) + f" |{pad}")
        ref = REFERENCE.get(str({**base, **v.runs[0].params}.get("dataset")), {}).get(v.label)
        if ref and split == "test":
            lines.append(f"| ↳ {ref[0]} | | " + " | ".join(f"{ref[1][m]:.4f}" if m in ref[1] else "–" for m in METRICS)
                         + f" |{pad}")
    common = next((v.common for v in rows if v.common), None)
    if common:
        mine = presets.variant_of({**base, **common})
        if mine and mine != presets.variant_of(base):  # the switches of a variant: named by it
            common = {"variant": mine, **{k: v for k, v in common.items() if k not in presets.SWITCHES}}
        lines.append(f"\nAll experiments also set: {_kv(common)}; the rows name what else they change.")
    committed = next((r for v in rows for r in v.runs if not r.is_exp), None)
    if committed is not None:
        where = ", ".join(str(committed.metrics[k]) for k in ("device", "amp_reason") if committed.metrics.get(k))
        row = next(v.label for v in rows if committed in v.runs)
        lines.append(f"\n\"{row}\" is the committed metrics of {committed.name} ({EVAL_FILE}"
                     + (f": {where}" if where else "") + "), made where that commit was made, possibly on another "
                     "machine or CPU class; `dvc exp run` with no change gives this machine's figure.")
    return "\n".join(lines)


def report(base: dict[str, Any], runs: list[Run], dvc: dict, split: str = "test", details: bool = False
           ) -> tuple[str, str]:
    """The results table of `runs` (those with metrics/eval.json as PRISM's rows, then the reference
    models' rows) and a one-line account of it. Settings every experiment shares (stated once under the
    table) are left out of the reference rows' labels too."""
    rows = group(base, [r for r in runs if r.metrics])
    common = next((v.common for v in rows if v.common), {})
    refs = reference_rows({**base, **common}, runs, dvc, split=split)
    said = (f"report: {sum(len(v.runs) for v in rows)} runs in {len(rows)} rows, {len(refs)} "
            f"reference rows ({split})")
    return table(base, rows, split, refs, details), said


def exp_show_json(repo: Path = Path(".")) -> list:
    try:
        out = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise DataError("`dvc` not found on PATH: activate the project's environment (source .venv/bin/activate).") from None
    except subprocess.CalledProcessError as exc:
        raise DataError(f"`dvc exp show --json` failed: {exc.stderr.strip()[-500:]}") from None
    return json.loads(out.stdout)
