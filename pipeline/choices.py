"""Every list of choices, once (issue 33): the datasets, the tokenizers, the ablation switches and the HSA
readings. Torch-free (the params schema, the CLI and the report import it without loading a model); the
schema (`pipeline/schema.py`), the variants (`pipeline/variants.py`), the readers and the models take their
lists from here, so adding a choice is one line here plus the code that implements it.
"""

from __future__ import annotations

# `dataset` -> the category name in the official Amazon 2014 file names (reviews_<Category>_5.json.gz,
# meta_<Category>.json.gz); `synthetic` is generated in the same formats (pipeline/data/synthetic.py)
DATASETS: dict[str, str] = {
    "synthetic": "Synthetic",
    "beauty": "Beauty",
    "sports": "Sports_and_Outdoors",
    "toys": "Toys_and_Games",
    "cds": "CDs_and_Vinyl",
}

# `tokenizer`: prism (Purified Semantic Quantizer, Eq. 2-9) | rqvae (TIGER's RQ-VAE: content only, every PRISM
# term off) | rqkmeans (PCA to d_cb, residual k-means, as GRID)
TOKENIZERS = ("prism", "rqvae", "rqkmeans")

# the ablation switches: each turns exactly one term of the paper off (params.yaml, top level)
QUANTIZER_SWITCHES = ("acd", "hsa", "dhr")  # Eq. 2-4, Eq. 6-7, Eq. 8
RECOMMENDER_SWITCHES = ("dsi", "ssa", "ats", "dt")  # Eq. 11-14, Eq. 15, Eq. 16, the Δt term of Eq. 10
SWITCHES = ("tokenizer", *QUANTIZER_SWITCHES, *RECOMMENDER_SWITCHES)  # what a variant sets

# `quantize.hsa_reading`: how Eq. 6-7 act (docs/design.md "HSA")
HSA_READINGS = ("codebook", "soft", "encoder", "cell", "official")

# old param names that still work: the value moves to the new name, with a one-line note (pipeline/config.py)
RENAMED = {"quantize.hsa_grad": "quantize.hsa_reading"}
