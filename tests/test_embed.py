from __future__ import annotations

import numpy as np
import pytest

from pipeline.features.embed import PAPER_MODEL, encode, load_model, resolve_model
from pipeline.utils import DataError


def test_packaged_model_resolves_to_local_folder():
    path = resolve_model("all-MiniLM-L6-v2")
    assert path.endswith("model") and resolve_model("sentence-transformers/all-MiniLM-L6-v2") == path
    assert resolve_model(PAPER_MODEL) == PAPER_MODEL  # the paper's model goes to the hub


def test_packaged_model_embeds_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("all-MiniLM-L6-v2", "cpu")
    e = encode(model, ["red lipstick", "matte lip color", "camping tent", ""], 8, "test")
    assert e.shape == (4, 384) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2]


def test_hub_model_offline_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # empty cache
    with pytest.raises(DataError, match="needs network.*embed_model=all-MiniLM-L6-v2"):
        load_model(PAPER_MODEL, "cpu")
