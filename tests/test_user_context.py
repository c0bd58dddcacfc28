"""train.context = "user": one example per user, all of the user's items as targets."""

import numpy as np
import pytest

from deep_retrieval.examples import Examples
from deep_retrieval.model import DeepRetrieval
from tests.test_contract import synthetic_dataset
from tests.test_model import tiny_config


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(seed=3)


def test_user_examples_hold_every_item_of_a_row_as_targets(data):
    ex = Examples(data, 4, "user")
    rows = data.train
    eligible = np.flatnonzero(rows.lengths >= 2)
    assert len(ex) == len(eligible)
    idx = np.array([0, 3, 1])
    hist, lengths, y = ex.batch(idx)
    for b, i in enumerate(idx):
        row = rows[eligible[i]]
        assert hist[b, : lengths[b]].tolist() == row[-4:].tolist()  # the most recent 4 as input
        t = y[b].numpy()
        assert t[t >= 0].tolist() == row.tolist()  # every item a target, oldest first
    r, items = ex.pairs(idx)
    assert items.tolist() == np.concatenate([rows[eligible[i]] for i in idx]).tolist()
    assert r.tolist() == np.repeat(np.arange(3), [len(rows[eligible[i]]) for i in idx]).tolist()
    want = np.bincount(np.concatenate([rows[i] for i in eligible]), minlength=data.n_items)
    np.testing.assert_array_equal(ex.item_counts(data.n_items), want)


def test_user_context_trains_end_to_end_and_the_mstep_scores_every_target(data, monkeypatch):
    import deep_retrieval.train as train

    seen = []
    real = train.collect_scores

    def spy(targets, flat, probs, V, S):
        seen.append(np.sort(targets))
        assert len(targets) == len(flat) == len(probs)
        return real(targets, flat, probs, V, S)

    monkeypatch.setattr(train, "collect_scores", spy)
    cfg = tiny_config(train__context="user", encoder__dropout=0.5, encoder__kind="mean",
                      reranker__loss="full", reranker__similarity="cosine", reranker__temperature=0.1)
    model = DeepRetrieval(cfg).fit(data, log=lambda _: None)
    rows = data.train
    all_items = np.sort(np.concatenate([rows[i] for i in np.flatnonzero(rows.lengths >= 2)]))
    assert len(seen) == 2 and all(np.array_equal(s, all_items) for s in seen)
    assert all(np.isfinite(e["Q_str"]) and 0 <= e["val_recall@10"] <= 1 for e in model.log)
    ids, _ = model.recommend(data.test.hist, 5)
    assert (ids >= 0).all()


def test_early_stopping_ends_the_joint_phase_when_validation_recall_is_flat(data):
    from deep_retrieval.train import _stalled

    log = [{"phase": "joint", "val_recall@10": v} for v in (0.1, 0.3, 0.2, 0.3)]
    assert _stalled(log, "val_recall@10", 2) and not _stalled(log, "val_recall@10", 3)
    assert not _stalled(log[:2], "val_recall@10", 2)
    # a learning rate of ~0 keeps validation recall flat: the joint phase stops after 1 + patience
    cfg = tiny_config(train__epochs_joint=6, train__epochs_dr=1, train__patience=1, train__lr=1e-12)
    model = DeepRetrieval(cfg).fit(data, log=lambda _: None)
    assert [e["phase"] for e in model.log] == ["joint", "joint", "dr"]


def test_cosine_model_fast_path_equals_the_torch_path(data):
    from deep_retrieval.fast import Retriever

    cfg = tiny_config(encoder__kind="mean", reranker__similarity="cosine", reranker__temperature=0.1)
    model = DeepRetrieval(cfg).fit(data, log=lambda _: None)
    hist = data.test.hist
    want_ids, want_scores = model.recommend(hist, 5)
    u_str = model.user_embeddings(hist, which="str")
    u_rr = model.user_embeddings(hist, which="rr")
    np.testing.assert_allclose(np.linalg.norm(u_rr, axis=1), 1.0, rtol=1e-5)  # unit users
    np.testing.assert_allclose(np.linalg.norm(model.net.reranker.item_embeddings(), axis=1), 1.0, rtol=1e-5)
    ids, scores, _ = Retriever.from_model(model).search(u_str, u_rr, 5, cfg.beam.B)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(scores[np.isfinite(scores)]) <= 1 + 1e-5)  # cosines
    np.testing.assert_array_equal(ids[:, 0], want_ids[:, 0])


@pytest.mark.parametrize("B", [0, -3, 1.5, True])
def test_api_refuses_a_bad_beam(data, B):
    from deep_retrieval.errors import DRError

    model = DeepRetrieval(tiny_config()).fit(data, log=lambda _: None)
    with pytest.raises(DRError, match="beam size"):
        model.recommend([[1, 2]], 3, B=B)
    with pytest.raises(DRError, match="beam size"):
        model.beam_search([[1, 2]], B=B)


def test_api_fit_refuses_what_is_not_a_dataset(tmp_path):
    from deep_retrieval.errors import DRError

    with pytest.raises(DRError, match="takes a Dataset"):
        DeepRetrieval(tiny_config()).fit(str(tmp_path))
