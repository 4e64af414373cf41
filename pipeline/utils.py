"""Small shared helpers: atomic writes, logging, seeding, device choice, JSON metrics."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

log = logging.getLogger("prism")


class PrismError(Exception):
    """A user-facing error: its message names what is wrong and the fix; stages print it as one line.
    Anything else that escapes a stage is a bug and keeps its traceback (stages/common.py)."""


class DataError(PrismError):
    """Bad or missing input, with a message that names the file, the record and the fix."""


class ParamError(PrismError, ValueError):
    """A param (or option) with a value the code cannot use; the message names it and the choices."""


def setup_logging(level: int = logging.INFO) -> None:
    """Logs go to stderr; stdout is kept for each stage's one-line summary."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    An interrupted stage therefore never leaves a half-written file for DVC to cache.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


VERSIONED = ("torch", "numpy", "pandas", "dvc", "sentence-transformers")
LOCK_FILE = Path(__file__).resolve().parents[1] / "requirements.lock"


def versions() -> dict[str, str | None]:
    """The installed versions of the packages a metric depends on most (None: not installed) and the
    first 12 hex digits of requirements.lock's sha256 (the lock the checkout names; `make install`
    installs exactly it), so a metrics file says which environment made it."""
    import hashlib
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["requirements.lock"] = hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()[:12] if LOCK_FILE.is_file() else None
    return out


def lock_pins(path: Path = LOCK_FILE) -> dict[str, str]:
    """requirements.lock's `name==version` pins (names as written there)."""
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line)
        if m:
            pins[m.group(1)] = m.group(2)
    return pins


def lock_diff(path: Path = LOCK_FILE) -> list[str]:
    """The lock's packages whose installed version differs from the pin ('missing' when not installed)."""
    from importlib import metadata

    out = []
    for name, pin in lock_pins(path).items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = "missing"
        if have != pin:
            out.append(f"{name} {have} (lock {pin})")
    return out


def write_metrics(path: str | Path, obj: dict[str, Any]) -> None:
    """A stage's metrics JSON (DVC metrics), with the package versions it ran with (`versions`)."""
    write_json(path, {**obj, "versions": versions()})


def write_curve(path: str | Path, rows: list[dict]) -> None:
    """A per-epoch curve as CSV (DVC plots): one row per epoch, the union of the rows' keys as columns."""
    import csv

    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["epoch"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def write_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def write_parquet(path: str | Path, df) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_torch(path: str | Path, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def resume_from(last: Path | None, fingerprint: str, device: str, who: str, model, opt, rng) -> dict | None:
    """A training loop's resume: when `last` exists and was written with the same `fingerprint` (same params
    and data), load the model, optimizer and numpy generator from it and return the checkpoint (for what
    else the loop keeps there); else None, logged as starting over when the file was another run's."""
    if last is None or not last.is_file():
        return None
    ck = load_torch(last, device)
    if ck.get("fingerprint") != fingerprint:
        log.info("%s: %s is from other params or data; starting over", who, last)
        return None
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    rng.bit_generator.state = ck["numpy_rng"]
    return ck


def load_torch(path: str | Path, device: str = "cpu") -> Any:
    """Load a `.pt` artifact the safe way: `weights_only=True` (tensors, dicts, lists, numbers and
    strings only: a pickle from elsewhere cannot run code here) onto `device`. Every `.pt` the project
    writes holds only those. A file that is not such an artifact is a one-line DataError."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a prism artifact that loads safely (torch.load weights_only=True refused "
                        f"it: {first[:200]}). Re-create it with the prism stage that writes it; never load "
                        "model files of unknown origin.") from None


def resolve_deterministic(setting: bool | str, device: str) -> bool:
    """`recommender.deterministic`, the one rule of every stage that runs torch: deterministic kernels or not.
    `auto`: on for a CPU (same params, same metrics: e.g. index backward without atomics), off for CUDA, where
    they are slower and fill every new allocation (`torch.utils.deterministic.fill_uninitialized_memory`), so a
    GPU's users/s and latency would differ between `prism evaluate`, validation and the benchmarks; GPU runs then
    vary in the last digits between runs, as GPU training usually does."""
    import torch

    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ParamError(f"recommender.deterministic must be true, false or 'auto', got {setting!r}")
    return torch.device(device).type != "cuda"


def seed_everything(seed: int, device: str = "cpu", deterministic: bool | str = "auto") -> np.random.Generator:
    """Seed Python, numpy and torch, and set deterministic kernels by `resolve_deterministic` (what a stage's
    metrics record as `deterministic`: `deterministic_kernels()`)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    det = resolve_deterministic(deterministic, device)
    torch.use_deterministic_algorithms(det, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = det
    return np.random.default_rng(seed)


def deterministic_kernels() -> bool:
    """Whether torch runs deterministic kernels now (set by `seed_everything`): a stage's metrics say it."""
    import torch

    return torch.are_deterministic_algorithms_enabled()


def resolve_device(name: str = "auto") -> str:
    """`auto` picks CUDA when present, else CPU."""
    import torch

    import re

    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ParamError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParamError(f"device '{name}' requested but CUDA is not available; use 'auto' or 'cpu'.")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ParamError(f"device '{name}' requested but this machine has {n} CUDA device{'s' if n != 1 else ''} "
                         f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''}); use 'auto', 'cuda' or one of those.")
    return name
