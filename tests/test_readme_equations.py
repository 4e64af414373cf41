"""The README's "Paper → code" table and the code's docstrings say the same (issue 33, item 1).

Each row names an equation of the paper, a `file:symbol` and the params that act on it. The test fails when a
symbol moves or is renamed, when its docstring stops naming the equation, when a param in the table is not a
key of params.yaml, or when an equation of 1-18 has no row.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def table_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Paper → code", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Eq.")]
    return [r for r in rows if r and r[0][:1].isdigit()]


def claimed(doc: str) -> set[int]:
    """Equation numbers a docstring names: `Eq. 7`, `Eq. 12-13`, `Eq. 1 and 10-18`."""
    out: set[int] = set()
    for m in re.finditer(r"Eq\.\s*(\d+)(?:\s*[-–]\s*(\d+))?((?:\s*(?:,|and)\s*\d+(?:\s*[-–]\s*\d+)?)*)", doc):
        spans = [(m.group(1), m.group(2))] + re.findall(r"(\d+)(?:\s*[-–]\s*(\d+))?", m.group(3) or "")
        for lo, hi in spans:
            out.update(range(int(lo), int(hi or lo) + 1))
    return out


def params_keys() -> set[str]:
    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"
    return set(leaves(yaml.safe_load((ROOT / "params.yaml").read_text())))


def test_the_claimed_equation_numbers_are_read_as_written():
    assert claimed("Eq. 7, codebook reading") == {7}
    assert claimed("Eq. 12-13: G(x)") == {12, 13}
    assert claimed("(paper §3.4, Eq. 1 and 10-18)") == {1, *range(10, 19)}
    assert claimed("no equation here") == set()


def test_every_equation_of_the_paper_has_a_row():
    eqs = [int(r[0]) for r in table_rows()]
    assert sorted(eqs) == list(range(1, 19)), eqs


@pytest.mark.parametrize("row", table_rows(), ids=lambda r: f"Eq{r[0]}")
def test_the_row_names_a_symbol_whose_docstring_names_the_equation(row):
    eq, _, code, params = int(row[0]), row[1], row[2].strip("`"), row[3]
    path, symbol = code.split(":")
    assert (ROOT / path).is_file(), f"Eq. {eq}: {path} does not exist"
    obj = importlib.import_module(path[:-3].replace("/", "."))
    for part in symbol.split("."):
        obj = getattr(obj, part, None)
        assert obj is not None, f"Eq. {eq}: {code} has no {part}"
    assert eq in claimed(obj.__doc__ or ""), f"Eq. {eq}: the docstring of {code} does not name it: {obj.__doc__!r}"
    named = re.findall(r"`([^`]+)`", params)
    assert named, f"Eq. {eq}: no params named"
    missing = [k for k in named if k not in params_keys()]
    assert not missing, f"Eq. {eq}: {missing} are not keys of params.yaml"
