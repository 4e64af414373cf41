"""The type and range of every param in params.yaml, in one place, checked when params are read.

`load_params` (pipeline/config.py) checks every known key of the file after the `-S` overrides, so a
wrong value in params.yaml, `prism <stage> -S` or `dvc exp run -S` ends the command with one line
naming the param, its value and what is allowed, before any work. `SPEC` covers exactly the keys of
the shipped params.yaml (a test keeps them in step); keys it does not know are left alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from pipeline.utils import ParamError
from pipeline.choices import AMAZON2023, CUSTOM_FORMATS, DATASETS, HSA_READINGS, SWITCHES, TOKENIZERS
from pipeline.variants import VARIANTS


@dataclass(frozen=True)
class Rule:
    """What a param may be: `ok(value)` and the words for it (`allowed`)."""

    ok: Callable[[Any], bool]
    allowed: str
    wrong_type: tuple = ()  # examples of values of a wrong type (for the tests)
    out_of_range: tuple = ()  # examples of the right type outside the allowed range


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _range(lo, hi, lo_open: bool = False) -> str:
    left = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
    right = "" if hi is None else f"<= {hi}"
    return " and ".join(x for x in (left, right) if x)


def Int(lo: int | None = None, hi: int | None = None) -> Rule:
    return Rule(lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
                f"a whole number {_range(lo, hi)}".rstrip(), ("abc", 1.5, True, [1]),
                tuple(x for x in (None if lo is None else lo - 1, None if hi is None else hi + 1) if x is not None))


def Float(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Rule:
    def ok(v):
        if not _is_num(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or v <= hi
    bad = (None if lo is None else (lo if lo_open else lo - 1), None if hi is None else hi + 1)
    return Rule(ok, f"a number {_range(lo, hi, lo_open)}".rstrip(), ("abc", True, [1.0], float("nan")),
                tuple(x for x in bad if x is not None))


BOOL = Rule(lambda v: isinstance(v, bool), "true or false", ("yes", 1, "true "))
TEXT = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string", (3, ["a"]), ("", "  "))


def Choice(*values: str) -> Rule:
    words = repr(values[0]) if len(values) == 1 else "one of " + ", ".join(repr(x) for x in values)
    return Rule(lambda v: isinstance(v, str) and v in values, words, (3, True, list(values[:1])), ("nope",))


def Either(*rules: Rule) -> Rule:
    def ok(v):
        return any(r.ok(v) for r in rules)
    return Rule(ok, " or ".join(r.allowed for r in rules), tuple(x for r in rules for x in r.wrong_type if not ok(x)),
                tuple(x for r in rules for x in r.out_of_range if not ok(x)))


def ListOf(rule: Rule, min_len: int = 0, unique: bool = False) -> Rule:
    return Rule(lambda v: isinstance(v, list) and len(v) >= min_len and all(rule.ok(x) for x in v)
                and (not unique or len(set(map(repr, v))) == len(v)),
                f"a list of {'at least ' + str(min_len) + ' ' if min_len else ''}{'distinct ' if unique else ''}"
                f"items, each {rule.allowed}", (5, "abc", [rule.wrong_type[0]]),
                ([rule.out_of_range[0]],) + (([],) if min_len else ()))


POS = Int(1)
COUNT = Int(0)
PROB = Float(0.0, 1.0)
RATE = Float(0.0, lo_open=True)  # learning rates
NONNEG = Float(0.0)
AUTO = Choice("auto")
NULL = Rule(lambda v: v is None, "null (unset)", (0, "none"))

SPEC: dict[str, Rule] = {
    "seed": Int(0, 2**32 - 1),
    "dataset": Either(Choice(*DATASETS), Rule(
        lambda v: isinstance(v, str) and v.startswith("amazon23:") and v.removeprefix("amazon23:") in AMAZON2023,
        "'amazon23:<Category>' with a category of Amazon Reviews 2023 (e.g. amazon23:All_Beauty; "
        "AMAZON2023 in pipeline/choices.py)", (3,), ("amazon23:Nope",))),
    "raw_dir": TEXT,
    "custom.dir": TEXT,
    "custom.format": Choice(*CUSTOM_FORMATS),
    "custom.seq_separator": Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string", (3, ["a"]), ("",)),
    **{f"custom.columns.{k}": TEXT for k in ("user_id", "item_id", "timestamp", "categories")},
    "download": BOOL,
    "device": Rule(lambda v: isinstance(v, str) and (v in ("auto", "cpu", "cuda") or
                                                     (v.startswith("cuda:") and v[5:].isdigit())),
                   "'auto', 'cpu', 'cuda' or 'cuda:N'", (0, True), ("gpu", "cuda:x")),
    "embed_model": TEXT,
    # paper hyper-parameters (§4.1)
    "levels": Int(1, 8),
    "codebook_size": Int(2, 65536),
    "d_cb": POS,
    "beta": NONNEG,
    "lambda1": NONNEG,
    "lambda2": NONNEG,
    "delta": NONNEG,
    "tau_hsa": Float(0.0, lo_open=True),
    "gamma": NONNEG,
    "tau_min": Float(0.0, lo_open=True),
    "tau_max": Float(0.0, lo_open=True),
    "alpha": NONNEG,
    "d_moe": POS,
    "variant": Choice(*VARIANTS),
    "tokenizer": Choice("auto", *TOKENIZERS),
    **{k: Either(AUTO, BOOL) for k in SWITCHES[1:]},
    "decode_norm": Choice("renorm", "full"),
    "synthetic.size": Choice("tiny", "small", "cds"),
    "synthetic.max_epochs": POS,
    "synthetic.warmup_epochs": Float(0.0),
    "synthetic.baseline_epochs": POS,
    "preprocess.kcore": POS,
    "preprocess.max_seq_len": Int(1, 1024),
    "preprocess.tie_break": Choice("asin", "file_order"),
    "preprocess.popularity_transform": Choice("log1p", "none"),
    "preprocess.text_fields": ListOf(TEXT, min_len=1, unique=True),  # 2014 sets: TEXT_FIELDS (stage check)
    "preprocess.bad_records": Choice("error", "skip"),
    "embed.batch_size": POS,
    "embed.amp": Choice("auto", "bf16", "off"),
    "collab.method": Choice("lightgcn", "als"),
    "collab.valid_users": COUNT,
    "collab.dim": POS,
    "collab.layers": COUNT,
    "collab.max_epochs": POS,
    "collab.lr": RATE,
    "collab.batch_size": POS,
    "collab.reg": NONNEG,
    "collab.patience": POS,
    "collab.eval_every": POS,
    "quantize.hidden": ListOf(POS, min_len=1),
    "quantize.dropout": Float(0.0, 0.99),
    "quantize.epochs": POS,
    "quantize.batch_size": POS,
    "quantize.lr": RATE,
    "quantize.weight_decay": NONNEG,
    "quantize.patience": POS,
    "quantize.time_budget_min": NONNEG,
    "quantize.ema_decay": Float(0.0, 1.0),
    "quantize.restart_dead": BOOL,
    "quantize.acd_variance": Choice("item", "batch"),
    "quantize.acd_margin": Choice("relative", "popularity", "absolute"),
    "quantize.dhr_target_sg": BOOL,
    "quantize.hsa_reading": Choice(*HSA_READINGS),
    "quantize.hsa_grad": Either(NULL, Choice(*HSA_READINGS)),  # deprecated name of hsa_reading (choices.RENAMED)
    "quantize.hsa_cls": Choice("probe", "encoder"),
    "quantize.hsa_usage": NONNEG,
    "dedup.keep": Choice("closest", "first"),
    "dedup.candidates": POS,
    "dedup.beam": POS,
    "dedup.reg": Float(0.0, lo_open=True),
    "dedup.iters": POS,
    "dedup.chunk": POS,
    "recommender.d_model": POS,
    "recommender.d_ff": POS,
    "recommender.n_heads": POS,
    "recommender.d_head": POS,
    "recommender.enc_layers": POS,
    "recommender.dec_layers": POS,
    "recommender.dropout": Float(0.0, 0.99),
    "recommender.encoder": Choice("bidirectional", "causal"),
    "recommender.recency_bias": BOOL,
    "recommender.causal_stride": POS,
    "recommender.time_buckets": Int(2),
    "recommender.d_cont_proj": POS,
    "recommender.d_collab_proj": POS,
    "recommender.n_experts": POS,
    "recommender.top_k": POS,
    "recommender.eta_init": Float(),
    "recommender.n_ref": NONNEG,
    "recommender.lr": RATE,
    "recommender.batch_size": POS,
    "recommender.lr_scaling": Choice("none", "sqrt", "linear"),
    "recommender.max_epochs": POS,
    "recommender.patience": POS,
    "recommender.time_budget_min": NONNEG,
    "recommender.budget_anneal": BOOL,
    "recommender.warmup_steps": COUNT,
    "recommender.scheduler": Choice("cosine", "constant"),
    "recommender.grad_clip": NONNEG,
    "recommender.valid_users": Either(AUTO, COUNT),
    "recommender.bucket": BOOL,
    "recommender.compile": Either(Choice("auto", "off", "default", "reduce-overhead"), BOOL),
    "recommender.deterministic": Either(AUTO, BOOL),
    "recommender.length_buckets": Either(AUTO, ListOf(POS, unique=True)),
    "recommender.amp": Choice("auto", "bf16", "off"),
    "recommender.beam_size": Int(20, 4096),  # >= the largest K of validation (20)
    "recommender.eval_batch": Either(AUTO, POS),
    "baseline.model": Choice("sasrec"),
    "baseline.max_len": Either(AUTO, Int(1, 1024)),
    "baseline.d_model": POS,
    "baseline.layers": POS,
    "baseline.heads": POS,
    "baseline.dropout": Float(0.0, 0.99),
    "baseline.lr": Float(0.0, lo_open=True),
    "baseline.weight_decay": NONNEG,
    "baseline.batch_size": POS,
    "baseline.max_epochs": POS,
    "baseline.patience": POS,
    "evaluate.beam_size": Int(20, 4096),  # >= the largest K (20)
    "evaluate.batch_size": Either(AUTO, POS),
    "evaluate.amp": Choice("off", "bf16"),
    "evaluate.latency_users": COUNT,
}

# relations between params (checked when both are present)
RELATIONS: list[tuple[tuple[str, ...], Callable[..., bool], str]] = [
    (("tau_min", "tau_max"), lambda lo, hi: lo <= hi, "tau_min must be <= tau_max"),
    (("recommender.top_k", "recommender.n_experts"), lambda k, n: k <= n,
     "recommender.top_k must be <= recommender.n_experts"),
    # a semantic ID is one int64 (pipeline/tokenizer/dedup.py sid_int): K^L codes must fit, with a bit to spare
    (("levels", "codebook_size"), lambda L, K: L * math.log2(K) <= 62,
     "levels x log2(codebook_size) must be <= 62 (a semantic ID is one 64-bit integer: e.g. levels 4 with "
     "codebook_size up to 2^15)"),
    # a bucket shorter than the history would leave the longer histories without a shape (one compiled graph
    # per length, past the recompile limit)
    (("recommender.length_buckets", "preprocess.max_seq_len"),
     lambda b, n: not isinstance(b, list) or not b or max(b) >= n,
     "the largest of recommender.length_buckets must be >= preprocess.max_seq_len (the history length), "
     "e.g. [5, 10, 20] for histories of 20, or [] / auto"),
]


def leaves(data: dict, prefix: str = ""):
    for k, v in data.items():
        if isinstance(v, dict):
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def check(data: dict, source: str = "params.yaml") -> None:
    """Raise a one-line ParamError for the first known param whose value is not allowed."""
    values = dict(leaves(data))
    for key, value in values.items():
        rule = SPEC.get(key)
        if rule is not None and not rule.ok(value):
            raise ParamError(f"{source}: param '{key}' = {value!r} ({type(value).__name__}) is not allowed: it "
                             f"must be {rule.allowed}. Fix it in params.yaml or pass -S {key}=VALUE.")
    for keys, ok, msg in RELATIONS:
        if all(k in values for k in keys) and not ok(*(values[k] for k in keys)):
            got = ", ".join(f"{k} = {values[k]!r}" for k in keys)
            raise ParamError(f"{source}: {msg} (got {got}).")
