"""Issue 24: requirements.lock pins every package `make install` installs (torch aside) and still
satisfies pyproject.toml's ranges; metrics files name the versions they were made with."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, Version]:
    from pipeline.utils import lock_pins

    return {canonicalize_name(k): Version(v) for k, v in lock_pins(ROOT / "requirements.lock").items()}


def test_lock_satisfies_every_range_of_pyproject_and_leaves_torch_to_the_makefile():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    pins = locked()
    assert len(pins) > 50 and "torch" not in pins  # torch: the CPU wheel (or the CUDA build) first
    for r in reqs:
        name = canonicalize_name(r.name)
        if name == "torch":
            continue
        assert name in pins, f"{r.name} is in pyproject.toml but not in requirements.lock: run `make lock`"
        assert r.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {r.name}=={pins[name]}, outside pyproject.toml's '{r}': run `make lock`")
    text = (ROOT / "requirements.lock").read_text()
    assert "--hash=sha256:" in text and "make lock" in text  # hashes, and how it was made
    make = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements.lock" in make and "--python-version 3.11" in make


def test_every_lock_line_has_hashes():
    text = (ROOT / "requirements.lock").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", text)
    pinned = [b for b in blocks if re.match(r"^[A-Za-z0-9_.\-]+==", b)]
    assert pinned and all("--hash=sha256:" in b for b in pinned), [b.split()[0] for b in pinned if "--hash" not in b]


def test_metrics_name_the_versions_they_were_made_with(tmp_path):
    import json
    from importlib import metadata

    from pipeline.utils import versions, write_metrics

    write_metrics(tmp_path / "m.json", {"test": {"recall@10": 0.1}})
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["test"] == {"recall@10": 0.1}
    assert m["versions"]["torch"] == metadata.version("torch") and m["versions"]["numpy"] == metadata.version("numpy")
    assert set(m["versions"]) == {"torch", "numpy", "pandas", "dvc", "sentence-transformers", "requirements.lock"}
    assert len(m["versions"]["requirements.lock"]) == 12 and versions() == m["versions"]
