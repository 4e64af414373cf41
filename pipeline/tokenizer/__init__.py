"""Semantic tokenization (§3.3): the Purified Semantic Quantizer (`quantizer`, Eq. 2-9), its
training and the RQ-VAE / RQ-KMeans baselines (`train`), collision dedup (`dedup`, §3.3.3) and
semantic-ID quality metrics (`sid_metrics`, Table 3)."""
