"""YouTube-DNN (the paper's brute force): the contract, and that it is DR's softmax model alone."""

import numpy as np
import pytest
import torch

from deep_retrieval.baselines import Popularity
from deep_retrieval.data.synth import SynthConfig, generate
from deep_retrieval.errors import DRError
from deep_retrieval.metrics import compute
from deep_retrieval.youtube_dnn import YouTubeDNN
from tests.test_contract import RecommenderContract, synthetic_dataset
from tests.test_model import quiet, tiny_config


class TestYouTubeDNNContract(RecommenderContract):
    def make(self, dataset):
        m = YouTubeDNN(tiny_config())
        fit = m.fit
        m.fit = lambda ds: fit(ds, log=quiet)
        return m


@pytest.fixture(scope="module")
def fitted():
    data = synthetic_dataset(seed=3)
    return data, YouTubeDNN(tiny_config(train__epochs_joint=3)).fit(data, log=quiet)


def test_exact_inner_product_over_every_item(fitted):
    data, m = fitted
    hist = data.test.hist
    ids, scores = m.recommend(hist, 7)
    u = torch.from_numpy(m.user_embeddings(hist))
    full = m.net.reranker.full_scores(u).detach().numpy()  # (n, V)
    np.testing.assert_allclose(scores, np.sort(full, axis=1)[:, ::-1][:, :7], rtol=1e-5, atol=1e-6)
    assert np.all(m.last_items_scored == data.n_items)


def test_trains_for_epochs_joint_and_learns_planted_clusters(fitted):
    _, m = fitted
    assert [e["epoch"] for e in m.log] == [1, 2, 3]
    ds, _ = generate(SynthConfig(n_items=400, n_users=700, n_interactions=21_000, n_clusters=8,
                                 val_users=50, test_users=200, noise=0.05, seed=1))
    cfg = tiny_config(encoder__kind="mean", encoder__e=16, encoder__item_dim=16, reranker__negatives=50,
                      train__epochs_joint=3, train__batch_size=128, train__lr=1e-2)
    trained = YouTubeDNN(cfg).fit(ds, log=quiet)
    assert trained.log[-1]["Q_softmax"] > trained.log[0]["Q_softmax"]  # log-likelihood goes up
    ids, _ = trained.recommend(ds.test.hist, 10)
    pop, _ = Popularity().fit(ds).recommend(ds.test.hist, 10)
    recall = compute(ids, ds.test.truth, [10])[10]["recall"]
    assert recall > compute(pop, ds.test.truth, [10])[10]["recall"] + 0.015  # 0.143 vs 0.117


def test_same_seed_same_model():
    data = synthetic_dataset(seed=3)
    a = YouTubeDNN(tiny_config()).fit(data, log=quiet)
    b = YouTubeDNN(tiny_config()).fit(data, log=quiet)
    for (k, x), (_, y) in zip(a.net.state_dict().items(), b.net.state_dict().items(), strict=True):
        assert torch.equal(x, y), k


def test_load_errors(fitted, tmp_path):
    _, m = fitted
    with pytest.raises(DRError, match="not found"):
        YouTubeDNN.load(tmp_path / "nope")
    m.save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(DRError, match="corrupt"):
        YouTubeDNN.load(tmp_path / "m")
    with pytest.raises(DRError, match="not trained"):
        YouTubeDNN(tiny_config()).recommend([[1]], 3)
