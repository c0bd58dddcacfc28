"""Incremental updates (partial_fit / dr update): new items get paths, nothing else moves without data."""

import numpy as np
import pytest
import torch

from deep_retrieval.errors import DRError
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.update import extend_catalogue, log_dataset
from tests.test_contract import synthetic_dataset
from tests.test_model import tiny_config


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(seed=3)


@pytest.fixture()
def model(data):
    return DeepRetrieval(tiny_config(em__explore=True)).fit(data, log=lambda _: None)


def test_extend_catalogue_appends_unseen_ids_in_first_seen_order():
    ids, dense = extend_catalogue(np.array([10, 20, 30]), np.array([20, 99, 10, 98, 99]))
    np.testing.assert_array_equal(ids, [10, 20, 30, 99, 98])
    np.testing.assert_array_equal(dense, [1, 3, 0, 4, 3])
    with pytest.raises(DRError, match="integers"):
        extend_catalogue(np.array([10, 20]), np.array(["x"]))


def test_log_dataset_rows_are_time_ordered_per_user():
    ds, new = log_dataset(np.array([1, 2, 3]), users=[7, 5, 7, 5, 7], items=[3, 1, 2, 9, 1],
                          times=[3, 2, 1, 1, 2])
    assert ds.train.to_lists() == [[3, 0], [1, 0, 2]]  # user 5: 9 (new, index 3) then 1; user 7: 2, 1, 3
    np.testing.assert_array_equal(ds.item_ids, [1, 2, 3, 9])
    assert new.all()
    # earlier interactions of the same users come first in their rows, as inputs only
    ds, new = log_dataset(np.array([1, 2, 3]), users=[7, 5], items=[3, 1], times=[9, 9],
                          history=([5, 6, 7, 5], [2, 2, 1, 3], [5, 1, 1, 1]))
    assert ds.train.to_lists() == [[2, 1, 0], [0, 2]]  # user 5: 3, 2 (history) then 1; user 7: 1 then 3
    assert new.tolist() == [False, False, True, False, True]
    from deep_retrieval.examples import Examples

    ex = Examples(ds, 10, "prefix").only_targets_at(new)
    assert ex.targets.tolist() == [0, 2]


def test_an_update_without_data_only_decays_the_scores(model):
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    pi, s = model.assignment.copy(), model.scores.scores.copy()
    none = np.zeros(0, dtype=np.int64)
    model.partial_fit(users=none, items=none, log=lambda _: None)
    np.testing.assert_array_equal(model.assignment, pi)
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, before[k]), k
    eta = model.config.em.eta
    want = (eta * s.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(model.scores.scores, want, rtol=1e-6)
    assert model.log[-1]["phase"] == "update" and model.log[-1]["examples"] == 0


def test_a_new_item_gets_paths_and_can_be_retrieved(model, data, tmp_path):
    V = model.n_items
    new_id = int(model.item_ids.max()) + 1000
    # 40 users who watch two known items, then the new one: it becomes a target 40 times
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(40):
        a, b = rng.choice(V, 2, replace=False)
        users += [u, u, u]
        items += [model.item_ids[a], model.item_ids[b], new_id]
    model.partial_fit(users=np.array(users), items=np.array(items), times=np.tile([0, 1, 2], 40),
                      epochs=2, log=lambda _: None)
    assert model.n_items == V + 1 and model.item_ids[-1] == new_id
    paths = model.assignment[V]
    assert len(set(paths.tolist())) == model.config.structure.J
    assert model.scores.lengths()[V] > 0  # its users' beams scored it: the M-step placed it
    # the new item is on a path of the index and a full beam retrieves it
    S = model.config.structure
    ids, _ = model.recommend([[V]], k=V + 1, B=S.K**S.D)
    assert V in ids[0]
    # the saved model keeps the grown catalogue
    model.save(tmp_path / "m")
    back = DeepRetrieval.load(tmp_path / "m")
    assert back.n_items == V + 1 and back.dense_ids([new_id]).tolist() == [V]
    assert [e["phase"] for e in back.log][-2:] == ["update", "update"]


def test_update_epochs_must_be_positive(model):
    with pytest.raises(DRError, match="epochs"):
        model.partial_fit(users=[1], items=[model.item_ids[0]], epochs=0)


def test_dr_update_cli(model, tmp_path, capsys):
    from deep_retrieval.cli import main

    model.save(tmp_path / "m")
    new_id = int(model.item_ids.max()) + 7
    rows = ["user,item,time"] + [f"{u},{model.item_ids[u % 5]},{2 * u}" for u in range(30)] + \
        [f"{u},{new_id},{2 * u + 1}" for u in range(30)]
    (tmp_path / "new.csv").write_text("\n".join(rows) + "\n")
    new_log = str(tmp_path / "new.csv")
    assert main(["update", str(tmp_path / "m"), new_log, "--out", str(tmp_path / "m2")]) == 0
    assert "1 new items" in capsys.readouterr().out
    m2 = DeepRetrieval.load(tmp_path / "m2")
    assert m2.n_items == model.n_items + 1
    # the old model is untouched, and replacing it needs --force
    assert DeepRetrieval.load(tmp_path / "m").n_items == model.n_items
    assert main(["update", str(tmp_path / "m"), str(tmp_path / "new.csv"), "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_prepare_time_replay_then_train_and_update_from_the_cli(tmp_path, capsys):
    """dr prepare --protocol time-replay writes base/ (a data set) and the chunks; dr update takes one."""
    from deep_retrieval.cli import main
    from deep_retrieval.data.replay import Replay

    rng = np.random.default_rng(0)
    users = rng.integers(0, 80, 3000)
    rows = ["user,item,time"] + [f"{u},{rng.integers(0, 60)},{t}" for t, u in enumerate(users)]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "replay"
    assert main(["prepare", str(tmp_path / "log.csv"), "--protocol", "time-replay", "--chunks", "3",
                 "--out", str(out), "--val-users", "5"]) == 0
    assert "3 chunks" in capsys.readouterr().out
    rp = Replay.load(out)
    assert rp.n_chunks == 3 and len(rp.evals) == 3
    # a second run without --force is refused, naming the kind; a data set there is not a replay
    assert main(["prepare", str(tmp_path / "log.csv"), "--protocol", "time-replay", "--out", str(out)]) == 2
    assert "time-replay" in capsys.readouterr().err
    cfg = tiny_config()
    (tmp_path / "cfg.toml").write_text(cfg.to_toml())
    cfg_file, model_dir = str(tmp_path / "cfg.toml"), str(tmp_path / "m")
    assert main(["train", str(out / "base"), "--config", cfg_file, "--out", model_dir]) == 0
    c = rp.chunk(0)
    lines = ["user,item,time"] + [f"{u},{i},{t}" for u, i, t in zip(c.user, c.item, c.time, strict=True)]
    (tmp_path / "chunk0.csv").write_text("\n".join(lines) + "\n")
    assert main(["update", model_dir, str(tmp_path / "chunk0.csv"), "--out", str(tmp_path / "m1")]) == 0
    m0, m1 = DeepRetrieval.load(tmp_path / "m"), DeepRetrieval.load(tmp_path / "m1")
    assert m1.n_items >= m0.n_items and m1.log[-1]["phase"] == "update"
