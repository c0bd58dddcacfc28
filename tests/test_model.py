"""DeepRetrieval end to end: the contract, oracles against brute force, artefacts, training."""

import json

import numpy as np
import pytest
import torch

from deep_retrieval.baselines import BruteForce
from deep_retrieval.config import Config
from deep_retrieval.data.dataset import Ragged
from deep_retrieval.data.synth import SynthConfig, cluster_purity, generate
from deep_retrieval.errors import DRError
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.paths import PathIndex
from deep_retrieval.structure import to_flat
from tests.test_contract import RecommenderContract, synthetic_dataset


def tiny_config(**over) -> Config:
    cfg = Config.from_dict({
        "structure": {"K": 3, "D": 2, "J": 2, "hidden": [16]},
        "encoder": {"e": 8, "item_dim": 8, "max_seq_len": 10},
        "reranker": {"negatives": 10},
        "em": {"S": 4, "alpha": 1e-3, "T": 2},
        "beam": {"B": 3},
        "train": {"epochs_joint": 1, "epochs_dr": 1, "batch_size": 64, "progress": False},
    })
    for k, v in over.items():
        table, name = k.split("__")
        setattr(getattr(cfg, table), name, v)
    return cfg.validate()


def quiet(_):
    pass


class TestDeepRetrievalContract(RecommenderContract):
    def make(self, dataset):
        dr = DeepRetrieval(tiny_config())
        fit = dr.fit
        dr.fit = lambda ds: fit(ds, log=quiet)  # keep pytest output clean
        return dr


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(seed=3)


@pytest.fixture(scope="module")
def model(data):
    return DeepRetrieval(tiny_config()).fit(data, log=quiet)


def test_full_beam_equals_brute_force(model, data):
    """With B >= K^D every path is searched, so DR reranks every item: it IS brute force."""
    S = model.config.structure
    hist = data.test.hist
    ids, scores = model.recommend(hist, 7, B=S.K**S.D)
    bf_ids, bf_scores = model.as_recommenders()["brute-force"].recommend(hist, 7)
    from tests.test_fast import same_up_to_ties

    same_up_to_ties(ids, scores, bf_ids, bf_scores)  # the same scores, and the same items ties aside
    assert np.all(model.last_items_scored == data.n_items)


def test_candidates_are_the_items_on_the_beam_paths(model, data):
    hist = data.test.hist
    paths, logp = model.beam_search(hist, 2)
    assert paths.shape == (len(hist), 2, model.config.structure.D)
    assert np.all(logp[:, :-1] >= logp[:, 1:])
    flat = to_flat(paths, model.config.structure.K)
    index = PathIndex(model.assignment)
    ids, _ = model.recommend(hist, data.n_items, B=2)
    for u in range(len(hist)):
        on_paths = set(np.concatenate([index.items_of(int(c)) for c in flat[u]]).tolist())
        got = set(ids[u][ids[u] >= 0].tolist())
        assert got == on_paths
        assert model.last_items_scored[u] == len(on_paths)


def test_rerank_order_equals_reranker_scores(model, data):
    hist = data.test.hist
    ids, scores = model.recommend(hist, 5)
    u = model.user_embeddings(hist)
    emb = model.net.reranker.item_embeddings()
    for r in range(len(hist)):
        ok = ids[r] >= 0
        np.testing.assert_allclose(scores[r][ok], (emb[ids[r][ok]] @ u[r]), rtol=1e-5, atol=1e-6)


def test_assignment_has_J_distinct_paths(model, data):
    S = model.config.structure
    a = model.assignment
    assert a.shape == (data.n_items, S.J)
    assert np.all((a >= 0) & (a < S.K**S.D))
    assert np.all(np.sort(a, axis=1)[:, 1:] != np.sort(a, axis=1)[:, :-1])


def test_training_log(model):
    assert len(model.log) == 2
    first, second = model.log
    assert first["phase"] == "joint" and second["phase"] == "dr"
    assert first["Q_softmax"] is not None and second["Q_softmax"] is None
    for e in model.log:
        assert e["Q_str"] < 0 and np.isfinite(e["penalised_objective"])
        assert e["paths"]["non_empty"] >= 1
        assert 0.0 <= e["val_recall@10"] <= 1.0


def weights_after_each_phase(cfg, data):
    """The weights as the joint phase ends (logged after its last epoch) and at the end."""
    from deep_retrieval.state import TrainState
    from deep_retrieval.train import train

    snap = {}
    state = TrainState.new(cfg, data)

    def log(line):
        if "[joint]" in line:
            snap.update({k: v.detach().clone() for k, v in state.net.state_dict().items()})

    train(state, data, log=log)
    return snap, state.net.state_dict()


def test_phase_two_freezes_the_softmax_model(data):
    snap, after = weights_after_each_phase(tiny_config(), data)
    frozen = [k for k in after if k.startswith(("reranker.", "enc_rr."))]
    trained = [k for k in after if k.startswith(("structure.", "enc_str."))]
    assert frozen and trained
    assert all(torch.equal(snap[k], after[k]) for k in frozen)
    assert any(not torch.equal(snap[k], after[k]) for k in trained)


def test_shared_encoder_phase_two_trains_structure_only(data):
    snap, after = weights_after_each_phase(tiny_config(encoder__shared=True), data)
    assert not any(k.startswith("enc_rr.") for k in after)
    for k in after:
        changed = not torch.equal(snap[k], after[k])
        assert changed == k.startswith("structure."), k


def test_save_load_round_trip(model, data, tmp_path):
    model.save(tmp_path / "m")
    loaded = DeepRetrieval.load(tmp_path / "m")
    a = model.recommend(data.test.hist, 6)
    b = loaded.recommend(data.test.hist, 6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(loaded.assignment, model.assignment)
    np.testing.assert_array_equal(loaded.scores.paths, model.scores.paths)
    assert loaded.log == json.loads(json.dumps(model.log))


def test_gru_model_save_load_round_trip(data, tmp_path):
    """Loading builds the net on the meta device and assigns the saved tensors: the GRU's
    flat weights must follow, and nothing may stay on the meta device."""
    m = DeepRetrieval(tiny_config(encoder__kind="gru")).fit(data, log=quiet)
    m.save(tmp_path / "m")
    loaded = DeepRetrieval.load(tmp_path / "m")
    assert not any(t.is_meta for t in [*loaded.net.parameters(), *loaded.net.buffers()])
    a = m.recommend(data.test.hist, 6)
    b = loaded.recommend(data.test.hist, 6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("explore", [False, True])
def test_em_explore_reaches_coordinate_descent(data, monkeypatch, explore):
    from deep_retrieval import mstep, train

    seen = []

    def spy(*a, **kw):
        seen.append(kw["explore"])
        return mstep.coordinate_descent(*a, **kw)

    monkeypatch.setattr(train, "coordinate_descent", spy)
    DeepRetrieval(tiny_config(em__explore=explore)).fit(data, log=quiet)
    assert seen and set(seen) == {explore}


def test_load_errors(model, tmp_path):
    with pytest.raises(DRError, match="not found"):
        DeepRetrieval.load(tmp_path / "missing")
    model.save(tmp_path / "m")
    # weights cut short
    bad = tmp_path / "m" / "model.safetensors"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(DRError, match="corrupt"):
        DeepRetrieval.load(tmp_path / "m")
    bad.write_bytes(good)
    # a config that does not match the weights
    cfg = tmp_path / "m" / "config.toml"
    text = cfg.read_text()
    cfg.write_text(text.replace("e = 8", "e = 12"))
    with pytest.raises(DRError, match="do not match"):
        DeepRetrieval.load(tmp_path / "m")
    cfg.write_text("[structure\n")
    with pytest.raises(DRError, match="TOML"):
        DeepRetrieval.load(tmp_path / "m")
    cfg.write_text(text)
    (tmp_path / "m" / "meta.json").write_text("{")
    with pytest.raises(DRError, match="JSON"):
        DeepRetrieval.load(tmp_path / "m")


def test_save_is_atomic(model, tmp_path, monkeypatch):
    import deep_retrieval.model as mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(mod, "save_file", boom)
    with pytest.raises(OSError):
        model.save(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_bad_histories(model):
    with pytest.raises(DRError, match="outside"):
        model.recommend([[0, 10_000]], 3)
    with pytest.raises(DRError, match="k must be"):
        model.recommend([[0]], 0)
    with pytest.raises(DRError, match="not trained"):
        DeepRetrieval(tiny_config()).recommend([[0]], 3)


def test_exclude_history(model, data):
    hist = data.test.hist
    ids, _ = model.recommend(hist, 10, exclude_history=True, B=9)
    for r in range(len(hist)):
        assert not set(ids[r].tolist()) & set(hist[r].tolist())


def test_dense_ids(model):
    model.item_ids = np.array([f"i{j}" for j in range(model.n_items)])
    model._lookup = None
    np.testing.assert_array_equal(model.dense_ids(["i3", "i0"]), [3, 0])
    with pytest.raises(DRError, match="not in the model"):
        model.dense_ids(["nope"])
    model.item_ids, model._lookup = np.arange(model.n_items), None


def test_recovers_planted_clusters():
    """On planted data, items sharing a path share a cluster far more often than chance."""
    ds, planted = generate(SynthConfig(n_items=400, n_users=700, n_interactions=21_000, n_clusters=8,
                                       val_users=50, test_users=50, noise=0.05, seed=1))
    cfg = Config.from_dict({
        "structure": {"K": 4, "D": 2, "J": 1, "hidden": [32]},
        "encoder": {"kind": "mean", "e": 16, "item_dim": 16},
        "em": {"S": 16, "alpha": 1e-3},
        "beam": {"B": 4},
        "train": {"epochs_joint": 4, "epochs_dr": 0, "batch_size": 128, "progress": False},
    })
    dr = DeepRetrieval(cfg).fit(ds, log=quiet)
    purity = cluster_purity(dr.path_groups(), planted.item_clusters)
    rng = np.random.default_rng(0)
    chance = cluster_purity(dr.path_groups(rng.permutation(ds.n_items)), planted.item_clusters)
    assert purity > chance + 0.15, (purity, chance)


def test_brute_force_twin_uses_the_reranker(model, data):
    bf = model.as_recommenders()["brute-force"]
    assert isinstance(bf, BruteForce)
    u = model.user_embeddings(Ragged.from_lists([[1, 2, 3]]))
    full = model.net.reranker.item_embeddings() @ u[0]
    ids, _ = bf.recommend([[1, 2, 3]], 4)
    np.testing.assert_array_equal(ids[0], np.argsort(-full, kind="stable")[:4])


@pytest.mark.parametrize("every, expected", [(0, 2), (3, None)])
def test_mstep_schedule(data, monkeypatch, every, expected):
    """M-step once per epoch by default; every N batches (counted across epochs) otherwise."""
    import deep_retrieval.train as train

    sizes = []
    real = train.m_step

    def spy(model, ex, idx, N_v, distill=0):
        sizes.append(len(idx))
        return real(model, ex, idx, N_v, distill)

    monkeypatch.setattr(train, "m_step", spy)
    cfg = tiny_config(em__mstep_every=every)
    DeepRetrieval(cfg).fit(data, log=quiet)
    n_examples = len(data.example_positions())
    per_epoch = -(-n_examples // cfg.train.batch_size)
    if expected is not None:
        assert sizes == [n_examples] * expected
    else:
        assert len(sizes) == (2 * per_epoch) // every
        assert all(s <= every * cfg.train.batch_size for s in sizes)


def test_loaded_model_keeps_the_sampling_distribution(model, tmp_path):
    model.save(tmp_path / "m")
    loaded = DeepRetrieval.load(tmp_path / "m")
    assert torch.equal(loaded.net.reranker.q, model.net.reranker.q)
    assert int(loaded.net.item_counts.sum()) > 0


def test_sparse_embeddings_use_sparse_adam_and_keep_the_freeze(data):
    from deep_retrieval.train import make_optimizers

    cfg = tiny_config(train__sparse_embeddings="yes")
    snap, after = weights_after_each_phase(cfg, data)
    frozen = [k for k in after if k.startswith(("reranker.", "enc_rr."))]
    assert all(torch.equal(snap[k], after[k]) for k in frozen)
    net = DeepRetrieval(cfg).fit(data, log=quiet).net
    opts = make_optimizers(net, 1e-3, 0.0)
    sparse = {id(p) for p in opts[1].param_groups[0]["params"]}
    tables = {id(m.item_emb.weight) for m in (net.enc_str, net.enc_rr, net.reranker)}
    assert isinstance(opts[1], torch.optim.SparseAdam) and sparse == tables
    # "auto" keeps small catalogues dense
    assert len(make_optimizers(DeepRetrieval(tiny_config()).fit(data, log=quiet).net, 1e-3, 0.0)) == 1


def test_context_others_trains_on_every_item_of_a_row(data):
    from deep_retrieval.train import Examples

    prefix, others = Examples(data, 10, "prefix"), Examples(data, 10, "others")
    rows = data.train.lengths
    assert len(prefix) == int(np.sum(np.maximum(rows - 1, 0)))
    assert len(others) == int(rows[rows >= 2].sum())
    hist, lengths, y = others.batch(np.arange(len(others)))
    assert np.all(lengths.numpy() == np.minimum(np.repeat(rows[rows >= 2], rows[rows >= 2]) - 1, 10))
    dr = DeepRetrieval(tiny_config(train__context="others")).fit(data, log=quiet)
    assert dr.log[0]["examples"] == len(others)


def test_rerank_in_small_blocks_gives_the_same_result(model, data, monkeypatch):
    import deep_retrieval.retrieval as m

    monkeypatch.setattr(m, "DENSE_MIN_USERS", 1)
    for dense in (0, 8):  # the gather of the candidates' embeddings; a matmul over every item
        monkeypatch.setattr(m, "DENSE_RERANK", dense)
        monkeypatch.setattr(m, "RERANK_FLOATS", 1 << 25)
        want = model.recommend(data.test.hist, 7)
        for floats, rows in ((1, 32), (1 << 25, 3)):  # one user per block; blocks of 3 by candidate count
            monkeypatch.setattr(m, "RERANK_FLOATS", floats)
            monkeypatch.setattr(m, "RERANK_ROWS", rows)
            got = model.recommend(data.test.hist, 7)
            np.testing.assert_array_equal(want[0], got[0])
            np.testing.assert_allclose(want[1], got[1], rtol=1e-6)  # a matmul's last bit: its shape
        monkeypatch.setattr(m, "RERANK_ROWS", 32)
        if dense == 0:
            gathered = want
    np.testing.assert_array_equal(gathered[0], want[0])  # both ways score the same candidates alike
    np.testing.assert_allclose(gathered[1], want[1], rtol=1e-6)


def test_score_collection_does_not_depend_on_its_batching(data, monkeypatch):
    """The M-step's beams are searched in batches (512 examples on the CPU, 8,192 on a GPU):
    the batching changes no assignment, and the scores only by float rounding (BLAS blocking)."""
    import deep_retrieval.train as train_mod

    a = DeepRetrieval(tiny_config()).fit(data, log=quiet)
    monkeypatch.setattr(train_mod, "SCORE_BATCH", 7)
    b = DeepRetrieval(tiny_config()).fit(data, log=quiet)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    assert [e["penalised_objective"] for e in a.log] == pytest.approx(
        [e["penalised_objective"] for e in b.log], rel=1e-7)
