"""params.yaml is read with the YAML 1.2 rules DVC writes it with: every documented value works
bare or quoted, in the file, after `dvc exp run -S` re-serialises it, and through `prism -S`."""

from __future__ import annotations

import shutil

import pytest
from conftest import ROOT
from dvc.utils.serialize import modify_yaml

from pipeline.config import load_params


def test_bare_off_and_exponents_survive_dvcs_writer(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    text = path.read_text()
    old = ("  amp: auto               # training precision", "  amp: off                # ranking precision")
    assert all(o in text for o in old)
    text = text.replace(old[0], "  amp: off                # training precision", 1)  # bare off
    text = text.replace(old[1], '  amp: "off"              # ranking precision', 1)  # quoted off
    path.write_text(text)
    p = load_params(path)
    assert p["recommender.amp"] == "off" and p["evaluate.amp"] == "off"
    # what `dvc exp run -S lambda1=0.4 -S recommender.lr=1e-3` does to the file: DVC's own writer
    with modify_yaml(path) as data:
        data["lambda1"] = 0.4
        data["recommender"]["lr"] = 1e-3
    written = path.read_text()
    p = load_params(path)
    assert p["recommender.amp"] == "off" and p["evaluate.amp"] == "off", written
    assert p["lambda1"] == 0.4 and p["recommender.lr"] == pytest.approx(1e-3)
    assert isinstance(p["recommender.lr"], float) and p["gamma"] == pytest.approx(5e-4)
    assert p["decode_norm"] == "renorm" and p["download"] is True


@pytest.mark.parametrize("raw, value", [("off", "off"), ('"off"', "off"), ("on", "on"), ("1e-3", 1e-3),
                                        ("5e-4", 5e-4), ("0.001", 0.001), ("true", True), ("30", 30),
                                        ("[title, brand]", ["title", "brand"])])
def test_cli_overrides_parse_like_dvc(raw, value):
    from pipeline.config import _parse_override

    key, got = _parse_override(f"recommender.amp={raw}")  # the parse alone: the schema then checks the value
    assert key == "recommender.amp" and got == value and type(got) is type(value)


def test_the_recommender_accepts_every_documented_amp_value(tmp_path):
    from pipeline.amp import resolve_amp

    for raw in ("auto", "bf16", "off", '"off"'):
        p = load_params(ROOT / "params.yaml", [f"recommender.amp={raw}"])
        assert resolve_amp(p["recommender.amp"], "cpu").mode in ("bf16", "off")
