"""model=siamese model.encoding=text: the packaged sentence-embedding model's descriptor vectors, training end to
end, checkpoints that carry the frozen vectors, and the error without the text extra.

The model loads once per process (recarena.data.text_encoding caches it): the first test to need it pays a few
seconds, the others reuse it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recarena.data import text_encoding
from recarena.data.text_encoding import TEXT_DIM, descriptor_text_vectors, encode_queries
from recarena.data.triplets import MiningOptions, TripletData
from recarena.errors import ConfigError
from recarena.losses.triplet import TripletLoss
from recarena.models.siamese import Siamese
from recarena.run import train
from tests.test_siamese import SCHEMA, fit_briefly


def test_descriptor_vectors_are_unit_rows_one_per_string() -> None:
    vocabulary = ["sci-fi", "science fiction", "romance", "sci-fi"]
    vectors = descriptor_text_vectors(vocabulary)
    assert vectors.shape == (4, TEXT_DIM) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[3])  # one string, one vector
    cos = vectors @ vectors.T
    assert cos[0, 1] > cos[0, 2] + 0.2  # MiniLM: 0.82 against 0.32
    assert descriptor_text_vectors(list(vocabulary)) is vectors  # cached per vocabulary: encoded once
    assert np.allclose(encode_queries(["sci-fi"])[0], vectors[0], atol=1e-5)  # queries share the space
    assert descriptor_text_vectors([]).shape == (0, TEXT_DIM)


def test_one_epoch_end_to_end_writes_ranking_metrics_and_the_triplet_auc(make_cfg, tmp_path: Path) -> None:
    result = train(make_cfg("model=siamese", "model.encoding=text", "trainer.max_epochs=1"))
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["model"] == "siamese" and on_disk["epochs"] == 1
    for part in ("val", "test"):
        metrics = on_disk[part]
        for key in ("ndcg@10", "recall@20", "triplet_auc"):
            assert f"{part}/{key}" in metrics, key
        assert 0.0 <= metrics[f"{part}/triplet_auc"] <= 1.0 and f"{part}/descriptor_auc" not in metrics
    assert result["test"]["test/ndcg@10"] > 0


def test_checkpoint_carries_the_frozen_vectors(make_cfg, tmp_path: Path) -> None:
    _, dm, model, trainer = fit_briefly(make_cfg, "model.encoding=text", batches=3)
    # The encoding changes the encoder's input only: both encodings mine the same triplets.
    text = dm.prepared
    dm.view_options["encoding"] = "multi_hot"
    other = TripletData(dm)
    assert text.options.encoding == "text" and other.options.encoding == "multi_hot"
    assert np.array_equal(text.train, other.train) and np.array_equal(text.heldout, other.heldout)
    vectors = model.text_vectors.clone()
    assert vectors.abs().sum() > 0 and not any(p is model.text_vectors for p in model.parameters())
    path = tmp_path / "text.ckpt"
    trainer.save_checkpoint(path)

    restored = Siamese.load_from_checkpoint(path, loss=TripletLoss())  # no data attached: vectors from the file
    assert torch.equal(restored.text_vectors, vectors)
    restored._set_csr("desc", model.desc_indptr, model.desc_index)  # the data's CSR (not in checkpoints)
    items = torch.arange(dm.corpus.n_items)
    with torch.no_grad():
        assert torch.allclose(restored.embed_items(items), model.embed_items(items), atol=1e-6)


def test_without_the_text_extra_it_is_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails, find_spec finds nothing
    for build in (lambda: MiningOptions.from_config({"encoding": "text"}),
                  lambda: Siamese(SCHEMA, TripletLoss(), encoding="text")):  # fmt: skip
        with pytest.raises(ConfigError) as err:
            build()
        assert str(err.value) == text_encoding.MISSING and "\n" not in str(err.value)
    assert "pip install 'recarena[text]'" in text_encoding.MISSING
    # Found but broken on import: the same message (the loader is called uncached).
    monkeypatch.setattr(text_encoding, "require_text_extra", lambda: None)
    with pytest.raises(ConfigError, match=r"needs the text extra"):
        text_encoding._model.__wrapped__()
    MiningOptions.from_config({"encoding": "multi_hot"})  # the default never needs it


def test_missing_text_extra_fails_at_start_up_before_data_work(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    from recarena.checks import check_config

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    cfg = make_cfg("model=siamese", "model.encoding=text")
    with pytest.raises(ConfigError, match="needs the text extra"):
        check_config(cfg)  # train() runs it first, before the data is loaded
    check_config(make_cfg("model=siamese"))
