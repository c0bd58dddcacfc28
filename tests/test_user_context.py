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


def _scripted_validation(monkeypatch, values):
    """Replace validation by ``values[epoch]``; record each epoch's fingerprint at that point."""
    import deep_retrieval.train as train
    from tests.test_resume import fingerprint

    seen = []

    def fake(state, ds, k=10):
        seen.append(fingerprint(state))  # net, assignment and scores as the epoch left them
        return {f"val_recall@{k}": values[state.progress.epoch], "candidates_per_user": 1.0}

    monkeypatch.setattr(train, "_validate", fake)
    return seen


@pytest.mark.parametrize("restore", [True, False])
def test_early_stopping_rolls_back_to_the_best_epoch(data, monkeypatch, restore):
    from deep_retrieval.state import TrainState
    from deep_retrieval.train import train
    from tests.test_resume import fingerprint

    seen = _scripted_validation(monkeypatch, [0.2, 0.5, 0.3, 0.1, 0.9, 0.9])
    cfg = tiny_config(train__epochs_joint=6, train__epochs_dr=0, train__patience=2,
                      train__restore_best=restore)
    state = train(TrainState.new(cfg, data), data, log=lambda _: None)
    assert [e["epoch"] for e in state.log] == [1, 2, 3, 4]  # epochs 3 and 4 did not beat 0.5
    assert len(set(seen)) == 4  # every epoch changed the model
    if restore:
        assert fingerprint(state) == seen[1] and state.log[-1]["restored_epoch"] == 2
    else:
        assert fingerprint(state) == seen[3] and "restored_epoch" not in state.log[-1]
    assert state.best is None  # the copy is dropped once the joint phase is over


def test_the_best_epoch_survives_a_checkpoint_and_resume(data, monkeypatch, tmp_path):
    from deep_retrieval.state import Checkpointer, data_fingerprint, load_checkpoint
    from tests.test_resume import Stop, StopAt, fingerprint

    _scripted_validation(monkeypatch, [0.2, 0.5, 0.3, 0.1, 0.0])
    cfg = tiny_config(train__epochs_joint=4, train__epochs_dr=1, train__patience=2)
    want = DeepRetrieval(cfg).fit(data, log=lambda _: None)
    assert want.log[-2]["restored_epoch"] == 2 and [e["phase"] for e in want.log][-1] == "dr"
    ckpt, fp = tmp_path / "run.ckpt", data_fingerprint(data)
    n = -(-len(data.example_positions()) // cfg.train.batch_size)
    with pytest.raises(Stop):  # stopped in epoch 3, after epoch 2 became the best
        DeepRetrieval(cfg).fit(data, log=lambda _: None, checkpoint=StopAt(ckpt, fp, 2 * n + 1))
    assert load_checkpoint(ckpt, data).best["epoch"] == 2
    resumed = DeepRetrieval().fit(data, log=lambda _: None, resume=ckpt,
                                  checkpoint=Checkpointer(ckpt, fp, minutes=0))
    assert fingerprint(resumed) == fingerprint(want)


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
