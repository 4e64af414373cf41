"""Item features (§3.3.1): content embeddings (`embed`) and collaborative embeddings (`lightgcn`)."""
