"""Every list of choices, once (issue 33): the datasets, the tokenizers, the ablation switches and the HSA
readings. Torch-free (the params schema, the CLI and the report import it without loading a model); the
schema (`pipeline/schema.py`), the variants (`pipeline/variants.py`), the readers and the models take their
lists from here, so adding a choice is one line here plus the code that implements it.
"""

from __future__ import annotations

# `dataset` of the Amazon 2014 sets -> the category name in the official file names (reviews_<Category>_5.json.gz,
# meta_<Category>.json.gz); `synthetic` is generated in the same formats (pipeline/data/synthetic.py)
AMAZON2014: dict[str, str] = {
    "synthetic": "Synthetic",
    "beauty": "Beauty",
    "sports": "Sports_and_Outdoors",
    "toys": "Toys_and_Games",
    "cds": "CDs_and_Vinyl",
}
# the meta fields of the 2014 files that can form the item text (`preprocess.text_fields`)
AMAZON2014_TEXT_FIELDS = ("title", "brand", "categories", "price", "salesRank", "description")
# `dataset: custom` reads the user's own files from `custom.dir` (pipeline/data/custom.py)
DATASETS = (*AMAZON2014, "custom")
# the item text of Amazon Reviews 2023 when `preprocess.text_fields` is left at the 2014 list (which names
# `brand` and `salesRank`, fields the 2023 meta does not have)
AMAZON2023_TEXT_FIELDS = ("title", "store", "features", "categories", "description")
# `dataset: amazon23:<Category>`: a category of Amazon Reviews 2023, fetched by name (pipeline/data/amazon2023.py)
AMAZON2023 = (
    "All_Beauty", "Amazon_Fashion", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Baby_Products",
    "Beauty_and_Personal_Care", "Books", "CDs_and_Vinyl", "Cell_Phones_and_Accessories",
    "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food",
    "Handmade_Products", "Health_and_Household", "Health_and_Personal_Care", "Home_and_Kitchen",
    "Industrial_and_Scientific", "Kindle_Store", "Magazine_Subscriptions", "Movies_and_TV", "Musical_Instruments",
    "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies", "Software", "Sports_and_Outdoors",
    "Subscription_Boxes", "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games", "Unknown",
)
CUSTOM_FORMATS = ("auto", "table", "recbole", "amazon2023")  # `custom.format`

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
