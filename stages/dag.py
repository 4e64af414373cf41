"""`prism dag`: run dvc.yaml's stages in order where DVC is not installed, in the project or in a run folder of
its own (--dir): the one way the benchmarks and the GPU run execute the pipeline (issue 23)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import typer
import yaml

from pipeline.dag import _paths, between
from pipeline.dag import load as load_dvc
from pipeline.utils import DataError, ParamError, atomic_path

from .common import PARAMS_OPT, SET_OPT, params, stage, summary

ROOT = Path(__file__).resolve().parents[1]


def stage_argv(cmd: str, overrides: list[str]) -> list[str]:
    """A dvc.yaml `cmd` as an argv: `prism ...` runs through this Python (no PATH needed), with every
    `-S KEY=VALUE` appended (a stage reads only the params it reads; unknown keys are refused by it)."""
    argv = shlex.split(cmd)
    if argv and argv[0] == "prism":
        argv = [sys.executable, "-m", "stages.cli", *argv[1:]]
    return argv + [x for kv in overrides for x in ("-S", kv)]


def check_dir(folder: Path, params_file: Path, dvc_file: Path) -> None:
    """--dir must not be the project (the folder of the params file or of dvc.yaml, resolved): setting it up
    would rewrite the tracked params.yaml (its comments lost, raw_dir made absolute, every -S persisted)."""
    if folder.resolve() in {params_file.resolve().parent, dvc_file.resolve().parent}:
        raise ParamError(f"--dir {folder} is the project itself: its {params_file.name} would be rewritten; run "
                         "`prism dag` without --dir (the stages run in the project) or pick another folder.")


def link_targets(folder: Path, dvc_file: Path, links: list[str]) -> dict[str, Path]:
    """The `PATH=TARGET` links checked, PATH (normalised) -> TARGET, dvc.yaml's own first (`plots` reads its
    plot declarations). Each PATH is relative to the run folder, each TARGET exists, and the folder has no
    real file or folder where a link goes (it would be lost)."""
    out = {}
    for item in [f"dvc.yaml={dvc_file}", *links]:
        rel, sep, target = item.partition("=")
        src = Path(target).expanduser()
        if not sep or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ParamError(f"--link {item}: expected PATH=TARGET with PATH relative to the run folder "
                             "(a dvc.yaml output, e.g. data/processed=/data/beauty/processed).")
        if not src.exists():
            raise DataError(f"--link {item}: {src} does not exist; make it first (or leave the link out and let "
                            "the stage that writes it run).")
        dst = folder / rel
        if dst.exists() and not dst.is_symlink() and dst.resolve() != src.resolve():
            raise DataError(f"--link {item}: {dst} is already a real file or folder of this run; remove it or use "
                            "another --dir.")
        out[Path(rel).as_posix()] = src
    for rel in out:  # a link inside another link (or inside one left in the folder) lands outside the folder
        parts = Path(rel).parts
        for n in range(1, len(parts)):
            above = Path(*parts[:n]).as_posix()
            if above in out or (folder / above).is_symlink():
                raise ParamError(f"--link {rel}={out[rel]}: {above} is itself a link, so this one would be made "
                                 f"inside its target, outside the run folder {folder}; link {above} alone, or "
                                 f"remove the link at {folder / above}.")
    return out


def _through(folder: Path, out: str, links: dict[str, Path]) -> tuple[str, str] | None:
    """How writing `out` in `folder` would leave it, and what avoids that; None when it stays inside."""
    parts = Path(out).parts
    for rel, target in links.items():  # the output is, is under, or holds a link (made or not yet)
        n = min(len(parts), len(Path(rel).parts))
        if Path(rel).parts[:n] == parts[:n]:
            return f"--link {rel}={target}", f"leave out --link {rel}"
    for n in range(1, len(parts) + 1):  # a link left in the folder by an earlier call
        if (p := folder.joinpath(*parts[:n])).is_symlink():
            return f"the link {p} -> {os.readlink(p)}", f"remove {p}"
    if not (folder / out).resolve().is_relative_to(folder.resolve()):
        return f"{(folder / out).resolve()}", "fix its path in dvc.yaml"
    return None


def check_outputs(folder: Path, dvc: dict, names: list[str], links: dict[str, Path]) -> None:
    """Refuse a selected stage whose output (dvc.yaml outs, metrics, plots) would be written outside the run
    folder: through a link (one of `links`, made or not yet, at the output, above it or inside it; or one
    already in the folder on the output's path) or to a path resolving outside it. The stage would rewrite
    another run's (or a prepared input's) files, which that run's params do not describe."""
    bad = [(i, name, out, found) for i, name in enumerate(names)
           for out in [p for k in ("outs", "metrics", "plots") for p in _paths(dvc["stages"][name].get(k))]
           if (found := _through(folder, out, links))]
    if bad:
        _, name, out, (why, fix) = bad[0]
        after = bad[-1][0] + 1  # the first stage after every refused one
        skip = f"use --from {names[after]} to skip it, or " if after < len(names) else ""
        raise ParamError(f"stage {name!r} would write its output {out} through {why}, outside the run folder "
                         f"{folder}; {skip}{fix}.")


def run_dir(folder: Path, params_file: Path, dvc_file: Path, overrides: list[str], links: list[str], dvc: dict,
            names: list[str], dry_run: bool = False) -> None:
    """Make `folder` a run of its own, like a DVC experiment's workspace: its params.yaml is `params_file` (or,
    when the folder has one already, its own) with the overrides applied (validated as every stage does;
    `raw_dir` made absolute from the current folder, so the raw files are found where the caller sees them), and
    each `PATH=TARGET` link puts an existing output (another run's, or a prepared input) at the path dvc.yaml
    gives it, so the stages that make it need not run here. Everything is checked before anything is written
    (`check_dir`, `link_targets`, `check_outputs` on the selected `names`); `dry_run` stops there."""
    check_dir(folder, params_file, dvc_file)
    # a folder made before keeps its own params (the overrides apply on top of them), as a workspace would
    data = params(folder / "params.yaml" if (folder / "params.yaml").is_file() else params_file, overrides).to_dict()
    # the raw files stay where they are for the caller (a relative raw_dir would otherwise mean inside the folder)
    data["raw_dir"] = os.path.abspath(Path(data["raw_dir"]).expanduser())
    targets = link_targets(folder, dvc_file, links)
    check_outputs(folder, dvc, names, targets)
    if dry_run:
        return
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "params.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    for rel, src in targets.items():
        dst = folder / rel
        if dst.exists() and dst.resolve() == src.resolve():
            continue  # already there
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink():
            dst.unlink()
        dst.symlink_to(src.resolve())


@stage
def dag_cmd(
    start: str = typer.Option(None, "--from", help="first stage (and what follows from it)"),
    until: str = typer.Option(None, "--until", help="last stage (and what it needs)"),
    set_: list[str] = SET_OPT,
    dvc_file: Path = typer.Option(Path("dvc.yaml"), "--dvc", help="the pipeline"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check everything, print the stages and "
                                 "commands; run and write nothing"),
    folder: Path = typer.Option(None, "--dir", help="run in this folder instead: it gets params.yaml (--params, or "
                                "the folder's own from an earlier call, with the -S overrides applied), the --link "
                                "inputs and every output"),
    link: list[str] = typer.Option(None, "--link", help="with --dir: PATH=TARGET, an output made elsewhere put at "
                                   "its dvc.yaml path (e.g. data/processed=/tmp/beauty/prism/data/processed)"),
    params_file: Path = PARAMS_OPT,
):
    """Run dvc.yaml's stages in dvc repro's order, each with its own command and the -S overrides, in the
    current folder (or in --dir, a run folder of its own); for machines without DVC (a bare GPU image) and
    the benchmarks. No caching: every selected stage runs."""
    if link and folder is None:
        raise ParamError("--link needs --dir (the run folder the links go into).")
    dvc = load_dvc(dvc_file)
    names = between(dvc, start, until)
    env = None
    if folder is not None:
        run_dir(folder, params_file, dvc_file, set_ or [], link or [], dvc, names, dry_run)
        set_ = []  # in the run's own params.yaml now
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.time()
    for i, name in enumerate(names, 1):
        cmd = dvc["stages"][name].get("cmd")
        if not cmd:
            raise DataError(f"{dvc_file}: stage {name!r} has no cmd.")
        argv = stage_argv(" ".join(cmd) if isinstance(cmd, list) else str(cmd), set_ or [])
        print(f"dag: {name} ({i}/{len(names)}): {cmd}" + (f" {' '.join('-S ' + kv for kv in set_)}" if set_ else ""),
              file=sys.stderr, flush=True)
        if dry_run:
            continue
        rc = subprocess.run(argv, cwd=folder, env=env).returncode
        if rc != 0:
            raise DataError(f"stage {name!r} failed (exit {rc}); the stages after it did not run.")
    where = f" in {folder}" if folder is not None else ""
    summary(f"dag: {len(names)} stages {'listed' if dry_run else 'ran'} ({', '.join(names)}){where} in "
            f"{time.time() - t0:.0f}s")
