"""Stage `plots`: dvc.yaml's plots as PNG and SVG files under plots/img/ (offline; issue 25)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import typer

from pipeline.dag import load as load_dvc
from pipeline.plots import render, specs_from_dvc
from pipeline.utils import DataError

from .common import stage, summary


def resolve_rev(name: str) -> str:
    """A DVC experiment's git ref (refs/exps/.../NAME) or, failing that, `name` as a git revision; an
    unknown one is an error naming it."""
    try:
        refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], capture_output=True,
                              text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        refs = []
    ref = next((r for r in refs if r.rsplit("/", 1)[-1] == name), name)
    ok = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], capture_output=True)
    if ok.returncode != 0:
        raise DataError(f"--rev {name}: no such experiment or git revision (see `dvc exp list`).")
    return ref


def read_at(ref: str | None, path: str) -> str | None:
    """The file's text in the workspace (`ref` None) or at a resolved git ref (`resolve_rev`); None when it
    has no such file."""
    if ref is None:
        p = Path(path)
        return p.read_text() if p.is_file() else None
    res = subprocess.run(["git", "show", f"{ref}:{path}"], capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else None


@stage
def plots_cmd(
    rev: list[str] = typer.Option(None, "--rev", help="also draw this DVC experiment (or git revision) in each chart, "
                                  "e.g. --rev tiger: PRISM and TIGER in one chart; repeatable"),
    out: Path = typer.Option(Path("plots/img"), "--out", help="folder for the PNG and SVG files"),
    dvc_file: Path = typer.Option(Path("dvc.yaml"), "--dvc", help="the pipeline whose declared plots are drawn"),
    no_workspace: bool = typer.Option(False, "--no-workspace", help="draw only the --rev revisions"),
):
    """Draw every plot dvc.yaml declares (training curves, popularity groups) as PNG and SVG, with no
    browser or network: open plots/img/*.png (or .svg) in any image viewer."""
    dvc = load_dvc(dvc_file)
    revs = ([] if no_workspace else ["workspace"]) + list(rev or [])
    if not revs:
        raise DataError("--no-workspace needs at least one --rev.")
    refs = {r: None if r == "workspace" else resolve_rev(r) for r in revs}  # each revision looked up once
    written = render(specs_from_dvc(dvc), lambda rev, path: read_at(refs[rev], path), revs, out)
    if not written:
        raise DataError("no plot data found (plots/*.csv): run `dvc repro` first.")
    summary(f"plots: {len(written) // 2} charts ({', '.join(revs)}) -> {out}/*.png, *.svg")
