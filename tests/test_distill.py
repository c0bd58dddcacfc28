"""train.distill: the DR-only epochs also learn the frozen reranker's top items."""

import numpy as np
import pytest
import torch

import deep_retrieval.train as train
from deep_retrieval.errors import DRError
from deep_retrieval.examples import Examples
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.mstep import ScoreTable
from deep_retrieval.state import TrainState
from deep_retrieval.structure import StructureModel
from tests.test_contract import synthetic_dataset
from tests.test_model import tiny_config


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(seed=5)


def _user_config(**over):
    return tiny_config(train__context="user", encoder__kind="mean", encoder__dropout=0.3, **over)


@pytest.mark.parametrize("context", ["user", "prefix"])
def test_distill_targets_are_the_rerankers_top_items_outside_history_and_targets(data, context):
    state = TrainState.new(tiny_config(train__context=context, encoder__kind="mean"), data)
    ex = Examples(data, 10, context)
    hist, lengths, y = ex.batch(np.arange(min(40, len(ex))))
    state.net.train()
    m = 4
    got = train.distill_targets(state.net, hist, lengths, y, m).numpy()  # (b, m)
    assert state.net.training  # the caller's mode is kept
    state.net.eval()
    with torch.no_grad():
        s = state.net.reranker.full_scores(state.net.encode_rr(hist, lengths)).numpy()  # (b, V)
    for b in range(len(hist)):
        seen = set(hist[b][hist[b] >= 0].tolist()) | set(np.atleast_1d(y[b].numpy()).tolist())
        ranked = [v for v in np.argsort(-s[b], kind="stable") if v not in seen]
        assert got[b].tolist() == ranked[:m]


def test_distill_pads_when_fewer_items_remain(data):
    state = TrainState.new(_user_config(), data)
    hist, lengths, y = Examples(data, 10, "user").batch(np.arange(5))
    V = data.n_items
    got = train.distill_targets(state.net, hist, lengths, y, V + 3)  # (b, V): every item asked for
    assert got.shape == (5, V)
    for b in range(5):
        seen = set(y[b][y[b] >= 0].tolist())
        row = got[b].tolist()
        assert sorted(v for v in row if v >= 0) == sorted(set(range(V)) - seen)  # each unseen item once
        assert row.count(-1) == len(seen)  # the rest is padding


def test_distill_reaches_the_dr_only_phase_only(data, monkeypatch):
    seen, widths = [], []
    real_collect, real_loss = train.collect_scores, StructureModel.multipath_loss_multi

    def spy_collect(targets, flat, probs, V, S):
        seen.append(len(targets))
        return real_collect(targets, flat, probs, V, S)

    monkeypatch.setattr(train, "collect_scores", spy_collect)

    def spy_loss(self, u, paths, mask):
        widths.append(paths.shape[1])
        return real_loss(self, u, paths, mask)

    monkeypatch.setattr(StructureModel, "multipath_loss_multi", spy_loss)
    m = 3
    cfg = _user_config(train__distill=m, train__batch_size=1000)  # one batch per epoch
    DeepRetrieval(cfg).fit(data, log=lambda _: None)
    ex = Examples(data, cfg.encoder.max_seq_len, "user")
    n_pairs, T = len(ex.pairs(np.arange(len(ex)))[1]), int(ex.batch(np.arange(len(ex)))[2].shape[1])
    assert seen == [n_pairs, n_pairs + m * len(ex)]  # joint M-step: training pairs; DR-only: + m each
    assert widths == [T, T + m]


def test_distill_moves_never_seen_items_next_to_their_users(data):
    """An item no training example targets gets scores only from the distilled pairs."""
    base = DeepRetrieval(_user_config(train__seed=1)).fit(data, log=lambda _: None)
    dist = DeepRetrieval(_user_config(train__seed=1, train__distill=5)).fit(data, log=lambda _: None)
    ex = Examples(data, 10, "user")
    never = np.flatnonzero(ex.item_counts(data.n_items) == 0)
    assert len(never)  # the fixture has items without training examples
    assert (base.scores.paths[never] < 0).all()
    assert (dist.scores.paths[never] >= 0).any()


def test_score_collection_in_chunks_equals_one_pass_when_every_path_is_kept(data, monkeypatch):
    cfg = _user_config(em__S=9)  # K = 3, D = 2: 9 paths, every one kept in each chunk's table
    ex = Examples(data, cfg.encoder.max_seq_len, "user")
    idx = np.arange(len(ex))
    N_v = np.bincount(ex.pairs(idx)[1], minlength=data.n_items)

    def dense(table: ScoreTable) -> np.ndarray:
        out = np.zeros((table.V, 9))
        for v, (c, s) in enumerate(zip(table.paths, table.scores, strict=True)):
            out[v, c[c >= 0]] = s[c >= 0]
        return out

    merges = []
    real_merge = train.merge_sum
    monkeypatch.setattr(train, "merge_sum", lambda a, b, S: merges.append(1) or real_merge(a, b, S))
    monkeypatch.setattr(train, "SCORE_BATCH", 16)  # examples per beam-search batch
    tables = []
    for limit in (train.MAX_ENTRIES, 200):
        monkeypatch.setattr(train, "MAX_ENTRIES", limit)
        state = TrainState.new(cfg, data)
        train.m_step(state, ex, idx, N_v, distill=2)
        tables.append(dense(state.scores))
    assert len(merges) >= 3  # the second pass summed several chunk tables
    assert (tables[0] > 0).sum() > data.n_items
    np.testing.assert_allclose(tables[1], tables[0], rtol=1e-5, atol=1e-7)


def test_config_refuses_a_negative_distill():
    with pytest.raises(DRError, match="train.distill must be >= 0"):
        tiny_config(train__distill=-1)
