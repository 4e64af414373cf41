"""Loading `params.yaml`, applying overrides, and recording which keys a stage reads.

DVC re-runs a stage when one of the params it *declares* changes, so a stage that reads a key it
does not declare would go stale silently. `Params` records every key read; the test suite compares
that record with `dvc.yaml` for every stage.

params.yaml is read with the YAML 1.2 rules that DVC writes it with (ruamel.yaml, which DVC depends
on): `off`/`on`/`yes`/`no` are plain strings and `1e-3` is a number, whether bare or quoted, in the
file, through `dvc exp run -S` (which re-serialises the whole file) or through `prism <stage> -S`.
PyYAML's YAML 1.1 would read a bare `off` as False and `1e-3` as a string.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path
from typing import Any, Iterable

from ruamel.yaml import YAML

from pipeline import schema, variants
from pipeline.choices import RENAMED
from pipeline.utils import ParamError, PrismError


class ParamsError(PrismError, KeyError):
    pass


class Params:
    """Read-only view on the params dict that records the dotted keys accessed. A switch set to `auto`
    reads as its variant's value (pipeline/variants.py), and `variant` is then recorded as read too."""

    def __init__(self, data: dict[str, Any], source: str = "params.yaml"):
        self._data = data
        self._source = source
        self.accessed: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        node: Any = self._data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ParamsError(
                    f"{self._source}: missing param '{key}'. Add it (see the params.yaml shipped "
                    "with prism for every key and its default)."
                )
            node = node[part]
        self.accessed.add(key)
        if key in variants.SWITCHES and node == variants.AUTO:  # the variant's value (records `variant` read)
            node = variants.resolve(key, node, self["variant"])
        return node

    def __contains__(self, key: str) -> bool:
        """Whether the params have `key` (not recorded as read)."""
        node: Any = self._data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except ParamsError:
            return default

    def to_dict(self) -> dict[str, Any]:
        return self._data


def yaml12_load(text: str) -> Any:
    """Parse YAML text with the YAML 1.2 core schema, as DVC does (safe loader, no custom tags)."""
    return YAML(typ="safe", pure=True).load(text)


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ParamError(f"--set expects KEY=VALUE, got '{item}'")
    key, raw = item.split("=", 1)
    return key.strip(), yaml12_load(raw) if raw.strip() else ""


def load_params(path: str | Path = "params.yaml", overrides: Iterable[str] = ()) -> Params:
    """Load params.yaml and apply `KEY=VALUE` overrides (dotted keys, YAML-typed values)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: params file not found. Run from the project root or pass --params PATH."
        )
    data = yaml12_load(path.read_text()) or {}
    known = flat_keys(data)
    for item in overrides:
        key, value = _parse_override(item)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f" Did you mean '{close[0]}'?" if close else f" See {path} for every key."
                raise ParamsError(f"--set {item}: unknown param '{key}' (not in {path}).{hint}")
            if i < len(parts) - 1:
                node = node[part]
        if isinstance(node[parts[-1]], dict):
            raise ParamsError(f"--set {item}: '{key}' is a group of params; set one of its keys, e.g. "
                              f"'{key}.{next(iter(node[parts[-1]]), '...')}'.")
        node[parts[-1]] = value
    schema.check(data, str(path))  # every value's type and range (pipeline/schema.py)
    return Params(data, source=str(path))


def _renamed_note(where: str, old: str, new: str, value: Any) -> None:
    print(f"{where}: '{old}' is the old name of '{new}'; read as {new}={value} (use the new name)", file=sys.stderr)


def from_params(cls, p: Params, section: str, **given: Any):
    """A config dataclass from params, the one way every stage builds its config: each field is `given`, else
    `<section>.<field>`, else the top-level `<field>` (the paper's names and the switches), else its default.
    Lists become tuples where the field's default is a tuple (params are YAML)."""
    for old, new in RENAMED.items():  # an old name that is set wins over its new name, with a note
        group, _, name = new.rpartition(".")
        fields = {f.name for f in dataclasses.fields(cls)}
        if group == section and name in fields and name not in given and old in p and p[old] is not None:
            _renamed_note(p._source, old, new, p[old])
            given = {**given, name: p[old]}
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in given:
            kw[f.name] = given[f.name]
            continue
        for key in (f"{section}.{f.name}", f.name):
            if key in p:
                value = p[key]
                if isinstance(value, list) and isinstance(f.default, tuple):
                    value = tuple(value)
                kw[f.name] = value
                break
    return cls(**kw)


def flat_keys(data: dict, prefix: str = "") -> list[str]:
    """Every dotted key of a nested params dict (groups and leaves)."""
    out = []
    for k, v in data.items():
        out.append(prefix + str(k))
        if isinstance(v, dict):
            out += flat_keys(v, prefix + str(k) + ".")
    return out
