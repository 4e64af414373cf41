"""`prism dag`: run dvc.yaml's stages in order where DVC is not installed (issue 23)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import typer
import yaml

from pipeline.dag import between
from pipeline.utils import DataError

from .common import SET_OPT, stage, summary


def stage_argv(cmd: str, overrides: list[str]) -> list[str]:
    """A dvc.yaml `cmd` as an argv: `prism ...` runs through this Python (no PATH needed), with every
    `-S KEY=VALUE` appended (a stage reads only the params it reads; unknown keys are refused by it)."""
    argv = shlex.split(cmd)
    if argv and argv[0] == "prism":
        argv = [sys.executable, "-m", "stages.cli", *argv[1:]]
    return argv + [x for kv in overrides for x in ("-S", kv)]


@stage
def dag_cmd(
    start: str = typer.Option(None, "--from", help="first stage (and what follows from it)"),
    until: str = typer.Option(None, "--until", help="last stage (and what it needs)"),
    set_: list[str] = SET_OPT,
    dvc_file: Path = typer.Option(Path("dvc.yaml"), "--dvc", help="the pipeline"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the stages and commands, run nothing"),
):
    """Run dvc.yaml's stages in dvc repro's order, each with its own command and the -S overrides, in the
    current folder; for machines without DVC (a bare GPU image). No caching: every selected stage runs."""
    try:
        dvc = yaml.safe_load(dvc_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{dvc_file}: cannot read the pipeline ({exc}); run from the project root or pass --dvc.") from None
    names = between(dvc, start, until)
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
        rc = subprocess.run(argv).returncode
        if rc != 0:
            raise DataError(f"stage {name!r} failed (exit {rc}); the stages after it did not run.")
    summary(f"dag: {len(names)} stages {'listed' if dry_run else 'ran'} ({', '.join(names)}) in {time.time() - t0:.0f}s")
