"""One list per extension point (issue 33, items 3-4): pipeline/choices.py, the schema built from it, one
way from params to every config, and the old name `quantize.hsa_grad` still read (with a note)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import choices, schema
from pipeline.config import from_params, load_params
from pipeline.utils import ParamError

ROOT = Path(__file__).resolve().parents[1]


def test_the_lists_are_torch_free():
    code = ("import sys, pipeline.choices, pipeline.schema, pipeline.variants, pipeline.config; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize("key, names", [("dataset", list(choices.DATASETS)), ("tokenizer", list(choices.TOKENIZERS)),
                                        ("quantize.hsa_reading", list(choices.HSA_READINGS))])
def test_the_schema_takes_its_choices_from_the_lists(key, names):
    rule = schema.SPEC[key]
    assert all(rule.ok(n) for n in names)
    assert not rule.ok("not-a-" + names[0])


def test_every_switch_of_the_list_is_a_param_and_a_variant_key():
    from pipeline.variants import VARIANTS
    for k in choices.SWITCHES[1:]:
        assert schema.SPEC[k].ok("auto") and schema.SPEC[k].ok(False)
    assert all(set(v) == set(choices.SWITCHES) for v in VARIANTS.values())


def test_the_amazon_reader_knows_every_dataset_of_the_list():
    from pipeline.data.amazon import file_names
    for name, category in choices.AMAZON2014.items():
        assert category in " ".join(file_names(name))


def test_the_old_hsa_param_name_still_works_on_the_command_line(capsys):
    from pipeline.tokenizer.quantizer import QuantizerConfig
    from pipeline.tokenizer.train import TrainConfig

    p = load_params(ROOT / "params.yaml", ["quantize.hsa_grad=official"])  # DVC's -S needs the key in the file
    assert QuantizerConfig.from_params(p).hsa_reading == "official" and "quantize.hsa_grad" in p.accessed
    TrainConfig.from_params(p)  # the same section, no such field: no second note
    err = capsys.readouterr().err
    assert "quantize.hsa_grad" in err and "quantize.hsa_reading" in err and len(err.strip().splitlines()) == 1
    assert QuantizerConfig.from_params(load_params(ROOT / "params.yaml")).hsa_reading == "codebook"  # unset: null
    assert capsys.readouterr().err == ""


def test_the_old_hsa_param_name_in_the_file_wins_and_is_checked(tmp_path, capsys):
    from pipeline.tokenizer.quantizer import QuantizerConfig

    text = (ROOT / "params.yaml").read_text()
    f = tmp_path / "params.yaml"
    assert "\n  hsa_grad: null " in text
    f.write_text(text.replace("\n  hsa_grad: null ", "\n  hsa_grad: cell ", 1))  # as `dvc exp run -S` writes it
    assert QuantizerConfig.from_params(load_params(f)).hsa_reading == "cell"
    assert "old name" in capsys.readouterr().err
    f.write_text(text.replace("\n  hsa_grad: null ", "\n  hsa_grad: cellz ", 1))
    with pytest.raises(ParamError, match="quantize.hsa_grad"):
        load_params(f)


@dataclasses.dataclass
class _Cfg:
    lr: float = 1.0  # quantize.lr exists
    lambda1: float = 0.0  # top level only
    hidden: tuple = (1,)  # a list in params.yaml -> a tuple
    not_a_param: int = 7  # keeps its default
    shape: int = 0  # given


def test_from_params_reads_section_then_top_level_then_default():
    p = load_params(ROOT / "params.yaml", ["quantize.lr=0.005", "lambda1=0.4"])
    cfg = from_params(_Cfg, p, "quantize", shape=3)
    assert (cfg.lr, cfg.lambda1, cfg.not_a_param, cfg.shape) == (0.005, 0.4, 7, 3)
    assert isinstance(cfg.hidden, tuple) and list(cfg.hidden) == p["quantize.hidden"]
    assert {"quantize.lr", "lambda1", "quantize.hidden"} <= p.accessed and "not_a_param" not in p.accessed


def test_every_stage_config_comes_from_params_the_same_way():
    from pipeline.tokenizer.quantizer import QuantizerConfig
    p = load_params(ROOT / "params.yaml", ["quantize.hsa_reading=cell", "hsa=false", "quantize.dropout=0.3"])
    q = QuantizerConfig.from_params(p)
    assert (q.hsa_reading, q.hsa, q.dropout, q.levels) == ("cell", False, 0.3, p["levels"])
    assert q.hidden == tuple(p["quantize.hidden"])
