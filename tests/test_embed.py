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


class _FakeModel:
    """Stands in for a SentenceTransformer: a vector per text from its characters; can be killed."""

    def __init__(self, die_after: int | None = None):
        self.calls, self.die_after = 0, die_after

    def encode(self, texts, batch_size, show_progress_bar, convert_to_numpy, normalize_embeddings):
        if self.die_after is not None and self.calls >= self.die_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        import numpy as np
        return np.array([[len(t), sum(map(ord, t)) % 97, t.count("a")] for t in texts], dtype=np.float32)


def test_a_killed_embedding_goes_on_from_its_last_chunk_and_equals_one_pass(tmp_path):
    """Issue 35: a large catalogue is embedded in chunks saved as they are done; a run killed after two
    chunks goes on from the third, and the result equals one uninterrupted pass (and the direct encode)."""
    import numpy as np
    import pytest

    from pipeline.features.embed import encode

    rng = np.random.default_rng(0)
    texts = ["a" * int(n) + f" item {i}" for i, n in enumerate(rng.integers(0, 40, 1000))]
    want = _FakeModel().encode(texts, 8, False, True, False)
    one = encode(_FakeModel(), texts, 8, "items", resume=tmp_path / "ck", chunk_batches=4)  # 32 texts a chunk
    np.testing.assert_array_equal(one, want)
    assert not any((tmp_path / "ck").iterdir())  # the chunks are removed at the end
    with pytest.raises(KeyboardInterrupt):
        encode(_FakeModel(die_after=2), texts, 8, "items", resume=tmp_path / "ck", chunk_batches=4)
    (key,) = list((tmp_path / "ck").iterdir())
    assert len(list(key.iterdir())) == 2
    again = _FakeModel()
    np.testing.assert_array_equal(encode(again, texts, 8, "items", resume=tmp_path / "ck", chunk_batches=4), want)
    assert again.calls == int(np.ceil(1000 / 32)) - 2  # only the chunks not done before
    small = _FakeModel()
    np.testing.assert_array_equal(encode(small, texts[:20], 8, "items", resume=tmp_path / "ck", chunk_batches=4),
                                  want[:20])
    assert small.calls == 1  # up to one chunk: one call, as before


def test_bf16_embeddings_stay_within_cosine_0999_of_fp32():
    """Issue 35: `embed.amp: bf16` (auto on a CPU with native bf16: ~2.9x faster there) keeps every item's
    vector at cosine >= 0.999 to fp32 (measured 0.99996 at the worst of 2,000 synthetic items)."""
    from pipeline.amp import AmpChoice

    model = load_model("all-MiniLM-L6-v2", "cpu")
    texts = ["Title: Zuen Smoothing Clip Accessories MO-412. Categories: Hair Care > Accessories > Clips",
             "Title: hydrating serum. Price: 12.50. Description: " + "a gentle face serum for dry skin. " * 12,
             "unknown item", "Categories: Music > Jazz > Remasters"]
    a = encode(model, texts, 2, "texts")
    b = encode(model, texts, 2, "texts", precision=AmpChoice("bf16", "test"))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert b.dtype == np.float32 and cos.min() >= 0.999 and not np.array_equal(a, b), cos
