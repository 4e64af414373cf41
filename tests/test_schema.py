"""Issue 19: every param has a type and a range (pipeline/schema.py), checked when params are read: a
wrong value in params.yaml or through -S is a one-line error naming the param, its value and what is
allowed, never a traceback or a silently wrong run."""

from __future__ import annotations

import math

import pytest
from conftest import ROOT
from typer.testing import CliRunner

from pipeline.config import load_params
from pipeline.schema import SPEC, leaves
from pipeline.utils import ParamError
from stages.cli import app

SHIPPED = dict(leaves(load_params(ROOT / "params.yaml").to_dict()))


def test_the_schema_covers_exactly_the_shipped_params_and_accepts_their_values():
    assert set(SPEC) == set(SHIPPED)
    for key, value in SHIPPED.items():
        assert SPEC[key].ok(value), key


def _yaml(v) -> str:
    """A value as -S writes it (YAML)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and math.isnan(v):
        return ".nan"
    if isinstance(v, str):
        return f"'{v}'"
    if isinstance(v, list):
        return "[" + ", ".join(_yaml(x) for x in v) + "]"
    return repr(v)


@pytest.mark.parametrize("key", sorted(SPEC))
def test_every_param_rejects_a_wrong_type_and_an_out_of_range_value(key):
    rule = SPEC[key]
    assert rule.wrong_type, f"{key}: no wrong-type example"
    numeric = isinstance(SHIPPED[key], (int, float)) and not isinstance(SHIPPED[key], bool)
    if numeric or isinstance(SHIPPED[key], (str, list)):
        assert rule.out_of_range or rule.allowed.startswith(("a number", "a whole number")), key
    for bad in (*rule.wrong_type, *rule.out_of_range):
        with pytest.raises(ParamError) as e:
            load_params(ROOT / "params.yaml", [f"{key}={_yaml(bad)}"])
        msg = str(e.value)
        assert f"'{key}'" in msg and "must be" in msg and "\n" not in msg, (key, bad, msg)


def test_relations_and_the_cli_and_a_wrong_params_file(tmp_path):
    with pytest.raises(ParamError, match="tau_min must be <= tau_max"):
        load_params(ROOT / "params.yaml", ["tau_min=0.9", "tau_max=0.5"])
    with pytest.raises(ParamError, match="top_k must be <= recommender.n_experts"):
        load_params(ROOT / "params.yaml", ["recommender.top_k=4"])
    # the two cases through the CLI: one line, no traceback, nothing trained
    for arg, words in (("quantize.lr=abc", "'quantize.lr' = 'abc'"), ("quantize.epochs=-5", "'quantize.epochs' = -5")):
        res = CliRunner().invoke(app, ["quantize", "--params", str(ROOT / "params.yaml"), "-S", arg,
                                       "--out", str(tmp_path / "q")])
        assert res.exit_code == 1 and words in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "q").exists()
    # what `dvc exp run -S` writes is the params file itself
    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text().replace("  epochs: 300", "  epochs: many", 1))
    with pytest.raises(ParamError, match="'quantize.epochs' = 'many'"):
        load_params(p)
