"""The pipeline's graph as dvc.yaml defines it (issue 23): which stage feeds which, in what order.

A stage feeds another when one of its outputs (outs, metrics, plots) is, or contains, one of the other's
deps. `order` is a topological order that keeps dvc.yaml's own order among stages free to run, so
`prism dag` (where DVC is not installed) runs the same stages, with the same commands, in the order
`dvc repro` would; `prism report` reads which params can change a stage's result from the same graph.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.utils import DataError


def load(path: Path) -> dict:
    """dvc.yaml as a dict; an unreadable file is one DataError naming it."""
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot read the pipeline ({exc}); run from the project root or pass --dvc.") from None


def _paths(entries) -> list[str]:
    out: list[str] = []
    for e in entries or []:
        out.extend(e if isinstance(e, dict) else [e])
    return [str(x) for x in out]


def _params(entries) -> list[str]:
    out: list[str] = []
    for e in entries or []:
        if isinstance(e, dict):  # {params file: [keys]}
            for keys in e.values():
                out.extend(keys or [])
        else:
            out.append(e)
    return [str(x) for x in out]


def stages_of(dvc: dict) -> dict[str, dict]:
    stages = (dvc or {}).get("stages") or {}
    if not stages:
        raise DataError("dvc.yaml: no stages.")
    return stages


def parents(dvc: dict) -> dict[str, set[str]]:
    """stage -> the stages whose outputs it reads."""
    stages = stages_of(dvc)
    outs = {s: _paths(v.get("outs")) + _paths(v.get("metrics")) + _paths(v.get("plots")) for s, v in stages.items()}
    out: dict[str, set[str]] = {}
    for s, spec in stages.items():
        deps = _paths(spec.get("deps"))
        out[s] = {o for o, paths in outs.items() if o != s and any(
            d == p or d.startswith(p.rstrip("/") + "/") for d in deps for p in paths)}
    return out


def closure(start: str, edges: dict[str, set[str]]) -> set[str]:
    """`start` and every stage reachable from it along `edges`."""
    seen, todo = set(), [start]
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo.extend(edges.get(s, ()))
    return seen


def order(dvc: dict) -> list[str]:
    """Every stage after the stages it reads from; ties in dvc.yaml's order. A cycle is a DataError."""
    stages = list(stages_of(dvc))
    par = parents(dvc)
    done: list[str] = []
    while len(done) < len(stages):
        ready = [s for s in stages if s not in done and par[s] <= set(done)]
        if not ready:
            raise DataError(f"dvc.yaml: the stages {sorted(set(stages) - set(done))} depend on each other in a cycle.")
        done.append(ready[0])
    return done


def between(dvc: dict, start: str | None = None, until: str | None = None) -> list[str]:
    """The stages to run, in `order`: those downstream of `start` (itself included) and upstream of `until`
    (itself included); all when neither is given."""
    stages = stages_of(dvc)
    for name in (start, until):
        if name is not None and name not in stages:
            raise DataError(f"dvc.yaml has no stage {name!r}; its stages: {', '.join(stages)}.")
    par = parents(dvc)
    children = {s: {c for c, ps in par.items() if s in ps} for s in stages}
    keep = set(stages)
    if start is not None:
        keep &= closure(start, children)
    if until is not None:
        keep &= closure(until, par)
    return [s for s in order(dvc) if s in keep]


def param_keys(dvc: dict, stage: str) -> tuple[str, ...]:
    """The params `stage` reads, its own and those of every stage upstream of it: whatever can change its
    output."""
    stages = stages_of(dvc)
    keys: set[str] = set()
    for s in closure(stage, parents(dvc)) if stage in stages else ():
        keys.update(_params(stages[s].get("params")))
    return tuple(sorted(keys))
