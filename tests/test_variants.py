"""Issue 23: variants defined once (pipeline/variants.py), switches `auto` = the variant's value."""

from __future__ import annotations

import pytest

from pipeline.config import load_params
from pipeline.utils import ParamError
from pipeline.variants import SWITCHES, VARIANTS, resolved, variant_of


def test_shipped_params_are_prism_and_a_variant_sets_every_switch():
    p = load_params("params.yaml")
    assert {k: p[k] for k in SWITCHES} == VARIANTS["prism"] and "variant" in p.accessed
    t = load_params("params.yaml", ["variant=tiger"])
    assert {k: t[k] for k in SWITCHES} == {"tokenizer": "rqvae", **{k: False for k in SWITCHES[1:]}}
    # an explicit value overrides the variant's; a switch read without `auto` does not read `variant`
    mix = load_params("params.yaml", ["variant=tiger", "dsi=true"])
    assert mix["dsi"] is True and mix["ssa"] is False
    q = load_params("params.yaml", ["hsa=false"])
    assert q["hsa"] is False and "variant" not in q.accessed
    assert q["acd"] is True and "variant" in q.accessed


def test_unknown_variant_or_switch_value_is_one_clear_error():
    with pytest.raises(ParamError, match="variant"):
        load_params("params.yaml", ["variant=sasrec"])
    with pytest.raises(ParamError, match="hsa"):
        load_params("params.yaml", ["hsa=maybe"])


def test_resolved_params_compare_equal_across_spellings():
    auto = {"variant": "prism", **{k: "auto" for k in SWITCHES}, "lambda1": 0.5}
    by_name = resolved({**auto, "variant": "tiger"})
    spelled = resolved({**auto, "tokenizer": "rqvae", **{k: False for k in ("dsi", "ssa", "ats", "dt")}})
    assert by_name == spelled and variant_of(by_name) == "tiger" and "variant" not in by_name
    assert variant_of(resolved(auto)) == "prism" and variant_of(resolved({**auto, "hsa": False})) is None
    assert variant_of({"hsa": False}) is None  # no tokenizer: no variant
