"""Stage `plots`: dvc.yaml's plots as PNG and SVG files under plots/img/ (offline; issue 25)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import typer
import yaml

from pipeline.plots import render, specs_from_dvc
from pipeline.utils import DataError

from .common import stage, summary


def _exp_ref(name: str) -> str:
    """An experiment's git ref (refs/exps/.../NAME) or, failing that, `name` as a git revision."""
    try:
        refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], capture_output=True,
                              text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        refs = []
    hits = [r for r in refs if r.rsplit("/", 1)[-1] == name]
    return hits[0] if hits else name


def read_at(rev: str, path: str) -> str | None:
    """The file's text in the workspace (`rev` "workspace") or at a DVC experiment / git revision; None when
    that revision has no such file. An unknown revision is an error naming it."""
    if rev == "workspace":
        p = Path(path)
        return p.read_text() if p.is_file() else None
    ref = _exp_ref(rev)
    ok = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], capture_output=True)
    if ok.returncode != 0:
        raise DataError(f"--rev {rev}: no such experiment or git revision (see `dvc exp list`).")
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
    try:
        dvc = yaml.safe_load(dvc_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{dvc_file}: cannot read the pipeline ({exc}); run from the project root or pass --dvc.") from None
    revs = ([] if no_workspace else ["workspace"]) + list(rev or [])
    if not revs:
        raise DataError("--no-workspace needs at least one --rev.")
    written = render(specs_from_dvc(dvc), read_at, revs, out)
    if not written:
        raise DataError("no plot data found (plots/*.csv): run `dvc repro` first.")
    summary(f"plots: {len(written) // 2} charts ({', '.join(revs)}) -> {out}/*.png, *.svg")
