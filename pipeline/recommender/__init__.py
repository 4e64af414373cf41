"""Generative recommendation (§3.4): the Integrated Semantic Recommender (`model`, Eq. 1, 10-18),
samples and batches (`seqdata`), trie-constrained beam search (`beam`), training (`train`),
evaluation (`evaluate`), what the stages load (`assets`) and the user-facing API (`recommend`)."""
