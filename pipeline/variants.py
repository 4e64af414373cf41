"""Named variants of the pipeline, defined once, as data (issue 23).

A variant is a value for each of the tokenizer and the ablation switches (`acd`, `hsa`, `dhr` of the
quantizer; `dsi`, `ssa`, `ats`, `dt` of the recommender). In params.yaml each switch is `auto` (the
variant's value) or an explicit true/false, so

    dvc exp run -S variant=tiger              TIGER: RQ-VAE IDs, every PRISM term off
    dvc exp run -S hsa=false                  PRISM without HSA
    dvc exp run -S variant=tiger -S dsi=true  TIGER plus PRISM's dynamic semantic integration

and `prism report` names a row by its variant when its switches are exactly a variant's. Stages read the
switches through `Params` (pipeline/config.py), which resolves `auto` here and records `variant` as read.
"""

from __future__ import annotations

from typing import Any

from pipeline.utils import ParamError

from pipeline.choices import QUANTIZER_SWITCHES, RECOMMENDER_SWITCHES, SWITCHES  # noqa: F401 (re-exported)

AUTO = "auto"


def _all(tokenizer: str, on: bool) -> dict[str, Any]:
    return {"tokenizer": tokenizer, **{k: on for k in SWITCHES[1:]}}


VARIANTS: dict[str, dict[str, Any]] = {
    "prism": _all("prism", True),  # the paper's model: every term on
    "tiger": _all("rqvae", False),  # TIGER (Rajput et al. 2023): content-only RQ-VAE IDs, plain seq2seq recommender
    "rqkmeans": _all("rqkmeans", False),  # residual k-means IDs (as GRID) with TIGER's recommender
}
LABELS = {"prism": "PRISM", "tiger": "TIGER", "rqkmeans": "RQ-KMeans"}


def check_variant(name: Any) -> str:
    if name not in VARIANTS:
        raise ParamError(f"variant must be one of {', '.join(VARIANTS)}, got {name!r}")
    return name


def resolve(key: str, value: Any, variant: str) -> Any:
    """A switch's value: `auto` -> the variant's; anything else as given."""
    if key in SWITCHES and value == AUTO:
        return VARIANTS[check_variant(variant)][key]
    return value


def resolved(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat params dict as the stages see it: every `auto` switch replaced by its variant's value and
    `variant` itself dropped (its whole effect is in the switches), and the quantizer's switches off
    where the tokenizer ignores them (rqvae, rqkmeans): so every spelling of one run compares equal."""
    variant = flat.get("variant", "prism")
    out = {k: v for k, v in flat.items() if k != "variant"}
    for k in SWITCHES:
        if k in out:
            out[k] = resolve(k, out[k], variant if variant in VARIANTS else "prism")
    if out.get("tokenizer", "prism") != "prism":
        out.update({k: False for k in QUANTIZER_SWITCHES if k in out})
    return out


def variant_of(flat: dict[str, Any]) -> str | None:
    """The variant whose switch values a resolved params dict has exactly (None: a custom mix, or no
    `tokenizer` at all); another switch the dict lacks does not disagree."""
    if "tokenizer" not in flat:
        return None
    for name, sw in VARIANTS.items():
        if all(flat.get(k, v) == v for k, v in sw.items()):
            return name
    return None


ID_RECORD = "tokenizer.json"  # in models/quantizer (written by quantize) and data/sid (copied by dedup)


def id_record(p) -> dict[str, Any]:
    """What made a set of semantic IDs (issue 31 C): the tokenizer, the variant, the quantizer's switches as
    resolved, and a hash of every param the quantize stage read (`p.accessed`, read at the end of the stage)."""
    import hashlib
    import json

    rec = {"tokenizer": p["tokenizer"], "variant": p["variant"], **{k: p[k] for k in QUANTIZER_SWITCHES}}
    read = {k: p[k] for k in sorted(p.accessed)}
    rec["params_md5"] = hashlib.md5(json.dumps(read, sort_keys=True, default=str).encode()).hexdigest()
    return rec


def check_ids(record: dict | None, tokenizer: str, variant: str, where: str) -> None:
    """Refuse semantic IDs made by another tokenizer than this run's variant asks for (e.g. `prism dag --from
    train -S variant=tiger` on PRISM's IDs would train a hybrid and call it TIGER). `record` None: IDs made
    before the record existed (not checked)."""
    if record is not None and record.get("tokenizer") != tokenizer:
        raise ParamError(f"{where}: these semantic IDs were made by tokenizer {record.get('tokenizer')!r} (variant "
                         f"{record.get('variant')!r}), but this run (variant {variant!r}) asks for {tokenizer!r}. Make its "
                         f"IDs first: `dvc exp run -S variant={variant}` or `prism dag --from quantize -S variant={variant}`.")
