"""What every stage command shares: params loading with overrides, clean errors, summaries."""

from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path
from typing import Callable

import typer

from pipeline.config import Params, load_params
from pipeline.utils import PrismError, setup_logging

PARAMS_OPT = typer.Option(Path("params.yaml"), "--params", help="params file (DVC's params.yaml)")
SET_OPT = typer.Option(None, "--set", "-S", help="override a param: KEY=VALUE (dotted keys), repeatable")
# the inputs of the recommender stages (train, evaluate)
DATA_OPT = typer.Option(Path("data/processed"), help="preprocess output folder")
FEATURES_OPT = typer.Option(Path("data/features"), help="embed output folder")
COLLAB_OPT = typer.Option(Path("models/collab"), help="collab output folder")
SID_OPT = typer.Option(Path("data/sid"), help="dedup output folder")


def params(path: Path, overrides: list[str] | None) -> Params:
    return load_params(path, overrides or [])


def stage(fn: Callable) -> Callable:
    """Logging on stderr. The project's user-facing errors (`PrismError`: DataError, ParamError,
    ParamsError, QueryError) and a missing file end the command with their one-line message; anything
    else is a bug: its traceback is printed, then a one-line hint; the exit code is 1 either way."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        setup_logging()
        name = fn.__name__.removesuffix("_cmd")
        try:
            return fn(*args, **kwargs)
        except (PrismError, FileNotFoundError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"prism {name}: error: {msg}", file=sys.stderr)
            raise typer.Exit(code=1) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: keep the traceback
            traceback.print_exc()
            print(f"prism {name}: internal error ({type(exc).__name__}: {exc}). This looks like a bug in prism: "
                  "please report it with the traceback above.", file=sys.stderr)
            raise typer.Exit(code=1) from None

    return wrapper


def summary(line: str) -> None:
    """The one-line summary each stage prints on stdout."""
    print(line, flush=True)
