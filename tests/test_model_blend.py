"""A DR model that carries its blend (config [blend]): picked on validation users after
training, saved with the model, used by recommend, the fast serving path and evaluate."""

import json

import numpy as np
import pytest

from deep_retrieval.baselines import RP3beta
from deep_retrieval.blend import Blend, LogMean
from deep_retrieval.config import Config
from deep_retrieval.data.dataset import Dataset, Ragged, Split
from deep_retrieval.errors import DRError, InvalidInputError
from deep_retrieval.evaluate import FITTED, baseline, evaluate
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.recommender import Recommender
from deep_retrieval.rerank import Reranked
from tests.test_contract import synthetic_dataset
from tests.test_fast import same_up_to_ties
from tests.test_model import quiet, tiny_config

SPEC = "rp3beta:alpha=0.5,beta=0.3"


def blended_config(weights=(0.0, 0.5, 4.0), eps=(0.01, 0.3), exclude=False) -> Config:
    cfg = tiny_config()
    cfg.blend.scorer, cfg.blend.weights, cfg.blend.eps = SPEC, tuple(weights), tuple(eps)
    cfg.blend.exclude_history = exclude
    return cfg.validate()


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(seed=5)


@pytest.fixture(scope="module")
def plain(data):
    return DeepRetrieval(tiny_config()).fit(data, log=quiet)


@pytest.fixture(scope="module")
def forced(data):
    """A blend whose only choice is w = 4: the blend is always on."""
    return DeepRetrieval(blended_config(weights=(4.0,), eps=(0.3,))).fit(data, log=quiet)


def test_fit_picks_the_best_validation_row_and_records_every_row(data):
    lines = []
    m = DeepRetrieval(blended_config()).fit(data, log=lines.append)
    rows = m.blend["validation"]
    assert [(r["w"], r["eps"]) for r in rows] == [(w, e) for e in (0.01, 0.3) for w in (0.0, 0.5, 4.0)]
    best = max(rows, key=lambda r: r["recall"])
    assert (m.blend["w"], m.blend["eps"], m.blend["scorer"]) == (best["w"], best["eps"], SPEC)
    for r in rows:  # each row is that blend's recall@val_k over DR's candidates on the validation users
        rp3 = RP3beta(alpha=0.5, beta=0.3).fit(data)
        b = Blend([m.as_recommenders()["brute-force"], LogMean(rp3, r["eps"])], [1.0, r["w"]], data.n_items)
        want = evaluate(data, {"b": Reranked(m, b)}, [m.config.train.val_k], split="val",
                        latency_users=0)["results"][0]
        assert r["recall"] == pytest.approx(want["recall"])
    assert (m.blend_scorer is None) == (best["w"] == 0)
    assert any(line.startswith(f"blend: {SPEC}: w {best['w']} eps {best['eps']}") for line in lines)


def test_the_blend_does_not_change_training(plain, forced, data):
    hist = data.test.hist
    a_ids, a_s = plain.recommend(hist, 5)
    b_ids, b_s = forced.recommend(hist, 5, blend=False)
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_array_equal(a_s, b_s)
    np.testing.assert_array_equal(plain.assignment, forced.assignment)


@pytest.mark.parametrize("exclude", [False, True])
def test_recommend_ranks_the_candidates_by_the_blend(forced, data, exclude):
    assert forced.blend["w"] == 4.0 and forced.blend_scorer is not None
    hist = data.test.hist
    own = forced.as_recommenders()["dr"]
    rp3 = RP3beta(alpha=0.5, beta=0.3).fit(data)
    blend = Blend([forced.as_recommenders()["brute-force"], LogMean(rp3, 0.3)], [1.0, 4.0], data.n_items)
    ranked = Reranked(own.model, blend)
    want_ids, want_s = ranked.recommend(hist, 6, exclude_history=exclude)
    ids, s = forced.recommend(hist, 6, exclude_history=exclude)
    same_up_to_ties(ids, s, want_ids, want_s)  # an empty history ties every candidate
    np.testing.assert_array_equal(forced.last_items_scored, ranked.last_items_scored)
    own_ids, _ = own.recommend(hist, 6, exclude_history=exclude)
    plain_ids, _ = forced.recommend(hist, 6, exclude_history=exclude, blend=False)
    np.testing.assert_array_equal(own_ids, plain_ids)


def test_as_recommenders_names_both_rankings(plain, forced):
    assert set(plain.as_recommenders()) == {"dr", "brute-force"} and plain.as_recommenders()["dr"] is plain
    recs = forced.as_recommenders()
    assert set(recs) == {"dr", "brute-force", "dr+blend", "blend"}
    assert recs["dr+blend"] is forced and isinstance(recs["blend"], Blend)


def test_save_load_round_trip(forced, data, tmp_path):
    forced.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["blend"]["w"] == 4.0 and (tmp_path / "m" / "blend").is_dir()
    back = DeepRetrieval.load(tmp_path / "m")
    assert back.blend == forced.blend
    hist = data.test.hist
    for ex in (False, True):
        a, sa = forced.recommend(hist, 5, exclude_history=ex)
        b, sb = back.recommend(hist, 5, exclude_history=ex)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(sa, sb, rtol=1e-6)


def test_a_zero_weight_saves_no_scorer(data, tmp_path):
    m = DeepRetrieval(blended_config(weights=(0.0,), eps=(0.01,))).fit(data, log=quiet)
    assert m.blend["w"] == 0 and m.blend_scorer is None and m.final_scorer() is None
    recs = m.as_recommenders()  # the rows of a blended model, with the reranker alone in them
    assert recs["dr"] is m and recs["dr+blend"] is m and recs["blend"] is recs["brute-force"]
    m.save(tmp_path / "m")
    assert not (tmp_path / "m" / "blend").exists()
    back = DeepRetrieval.load(tmp_path / "m")
    assert back.blend["w"] == 0 and back.blend_scorer is None


def test_a_broken_blend_is_refused_on_load(forced, tmp_path):
    import shutil

    forced.save(tmp_path / "m")
    shutil.rmtree(tmp_path / "m" / "blend")
    with pytest.raises(DRError, match="the blend's scorer"):
        DeepRetrieval.load(tmp_path / "m")
    forced.save(tmp_path / "n")
    meta = json.loads((tmp_path / "n" / "meta.json").read_text())
    meta["blend"]["w"] = "four"
    (tmp_path / "n" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DRError, match="blend is malformed"):
        DeepRetrieval.load(tmp_path / "n")


def test_a_data_set_without_validation_users_is_refused_before_training(data):
    empty = Split(np.zeros(0, dtype=np.int64), Ragged.from_lists([]), Ragged.from_lists([]))
    ds = Dataset(item_ids=data.item_ids, user_ids=data.user_ids, train=data.train,
                 train_users=data.train_users, val=empty, test=data.test, manifest={})
    lines = []
    with pytest.raises(InvalidInputError, match="validation users"):
        DeepRetrieval(blended_config()).fit(ds, log=lines.append)
    assert lines == []  # nothing trained


@pytest.mark.parametrize("over, msg", [
    ({"scorer": "nope"}, "unknown baseline"),
    ({"scorer": "rp3beta:gamma=1"}, "not PARAM=VALUE"),
    ({"weights": [-1.0]}, "blend.weights"),
    ({"weights": []}, "blend.weights"),
    ({"eps": [0.0]}, "blend.eps"),
])
def test_bad_blend_configs_are_refused(over, msg):
    d = {"blend": {"scorer": SPEC, **over}}
    with pytest.raises(DRError, match=msg):
        Config.from_dict(d)


def test_the_fast_serving_path_ranks_as_recommend(forced, data, tmp_path):
    pytest.importorskip("fastapi")
    from deep_retrieval.serve import Served

    forced.save(tmp_path / "m")
    served = Served(tmp_path / "m")
    assert served.meta["blend"] == {"scorer": SPEC, "w": 4.0, "eps": 0.3}
    hist = data.test.hist
    hists = [hist[i] for i in range(len(hist))]
    for ex in (False, True):
        ids, scores, cands = served.search(hists, 5, forced.config.beam.B, exclude_history=ex)
        want, want_s = forced.recommend(hist, 5, exclude_history=ex)
        np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-6)
        same = np.isclose(scores[:, :-1], scores[:, 1:], rtol=1e-6).any(axis=1)  # ties may swap
        np.testing.assert_array_equal(ids[~same], want[~same])
        ids1, s1, _ = served.search(hists[:1], 5, forced.config.beam.B, exclude_history=ex)  # batch 1
        np.testing.assert_allclose(s1, want_s[:1], rtol=1e-5, atol=1e-6)


def test_an_update_with_new_items_drops_the_blend(data, tmp_path):
    m = DeepRetrieval(blended_config(weights=(4.0,), eps=(0.3,))).fit(data, log=quiet)
    m.partial_fit(np.array([1, 1, 2]), np.array([0, 1, 2]), epochs=1, log=quiet)  # known items only
    assert m.blend["w"] == 4.0 and m.blend_scorer is not None
    lines = []
    m.partial_fit(np.array([1, 1]), np.array([0, 999_999]), epochs=1, log=lines.append)
    assert m.blend["w"] == 0 and m.blend["dropped_by_update"] and m.blend_scorer is None
    assert any("blend dropped" in line for line in lines)
    ids, _ = m.recommend(Ragged.from_lists([[0, 1]]), 3)
    assert ids.shape == (1, 3)


def test_cli_trains_retrieves_and_evaluates_a_blended_model(data, tmp_path, capsys):
    from deep_retrieval.cli import main

    data.save(tmp_path / "data")
    cfg = tiny_config()
    (tmp_path / "cfg.toml").write_text(cfg.to_toml())
    args = ["train", str(tmp_path / "data"), "--config", str(tmp_path / "cfg.toml"),
            "--out", str(tmp_path / "m"), "--set", f"blend.scorer={SPEC}", "--set", "blend.weights=[4.0]",
            "--set", "blend.eps=[0.3]"]
    assert main(args) == 0
    assert f"blend: {SPEC}: w 4.0 eps 0.3" in capsys.readouterr().out
    model = DeepRetrieval.load(tmp_path / "m")
    assert main(["retrieve", str(tmp_path / "m"), "--history", "1,2,3", "--k", "4", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want, want_s = model.recommend(Ragged.from_lists([[1, 2, 3]]), 4)  # item ids are 0..V-1 here
    assert [r["item"] for r in got["items"]] == want[0][want[0] >= 0].tolist()
    np.testing.assert_allclose([r["score"] for r in got["items"]], want_s[0][want[0] >= 0], rtol=1e-5)
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(tmp_path / "data"), "--methods", str(tmp_path / "m"), "--k", "5",
                 "--json", str(out)]) == 0
    rows = {r["method"] for r in json.loads(out.read_text())["results"]}
    assert {"dr", "brute-force", "dr+blend", "blend"} <= rows
    capsys.readouterr()
    # a second blend on top of the carried one is one error
    assert main(["evaluate", str(tmp_path / "data"), "--methods", str(tmp_path / "m"), "--k", "5",
                 "--rerank", "rp3beta", "--blend", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already carries a blend" in err[0]
    # --rerank alone still adds DR's candidates ordered by the baseline
    assert main(["evaluate", str(tmp_path / "data"), "--methods", str(tmp_path / "m"), "--k", "5",
                 "--rerank", "item-cf"]) == 0
    assert "dr+item-cf" in capsys.readouterr().out


def test_the_retrievers_extra_term_does_not_depend_on_the_blocks(forced, data):
    from deep_retrieval.fast import Retriever

    r = Retriever.from_model(forced)
    hist = data.test.hist
    u_str, u_rr = forced.user_embeddings(hist, "str"), forced.user_embeddings(hist, "rr")
    log_mean = LogMean(forced.blend_scorer, 0.3, data.n_items)

    def extra(users, cands):
        return 4.0 * log_mean.score_items(hist.take(users), cands).values

    want_ids, want_s = forced.recommend(hist, 5)
    for chunk in (64, 3, 1):
        ids, s, n = r.search(u_str, u_rr, 5, forced.config.beam.B, chunk=chunk, extra=extra)
        np.testing.assert_allclose(s, want_s, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(n, forced.last_items_scored)
        same = np.isclose(s[:, :-1], s[:, 1:], rtol=1e-6).any(axis=1)  # ties may swap
        np.testing.assert_array_equal(ids[~same], want_ids[~same])


@pytest.mark.parametrize("val_B", [0, 1, 9])
def test_train_val_B_is_the_beam_of_the_validation_during_training(data, val_B):
    m = DeepRetrieval(tiny_config(train__val_B=val_B)).fit(data, log=quiet)
    want = m.candidates(data.val.hist, val_B or m.config.beam.B).lengths.mean()
    assert m.log[-1]["candidates_per_user"] == pytest.approx(want)  # the last epoch: the final paths


def test_cli_blend_refits_a_trained_models_blend_without_retraining(plain, data, tmp_path, capsys):
    from deep_retrieval.cli import main

    data.save(tmp_path / "data")
    plain.save(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    args = ["blend", str(tmp_path / "m"), str(tmp_path / "data"), "--out", str(tmp_path / "b"),
            "--set", f"blend.scorer={SPEC}", "--set", "blend.weights=[0.0, 0.5, 4.0]",
            "--set", "blend.eps=[0.01, 0.3]", "--set", "beam.B=5"]
    assert main(args) == 0
    assert f"blend: {SPEC}: w " in capsys.readouterr().out
    got = DeepRetrieval.load(tmp_path / "b")
    assert got.config.beam.B == 5 and got.blend["B"] == 5
    want = DeepRetrieval(blended_config()).fit(data, log=quiet)  # the same training, picked at B = 3
    want.config.beam.B = 5
    want.fit_blend(data, log=quiet)  # ... and at B = 5
    assert [(r["w"], r["eps"]) for r in got.blend["validation"]] == [
        (r["w"], r["eps"]) for r in want.blend["validation"]]
    np.testing.assert_allclose([r["recall"] for r in got.blend["validation"]],
                               [r["recall"] for r in want.blend["validation"]])
    assert (got.blend["w"], got.blend["eps"]) == (want.blend["w"], want.blend["eps"])
    np.testing.assert_array_equal(got.assignment, plain.assignment)  # nothing retrained
    hist = data.test.hist
    np.testing.assert_array_equal(got.recommend(hist, 5, blend=False)[0], plain.recommend(hist, 5, B=5)[0])
    np.testing.assert_array_equal(got.recommend(hist, 5)[0], want.recommend(hist, 5)[0])
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before  # the input untouched
    # in place, with --force: the blend is replaced (here: by the only choice, w = 4)
    assert main(["blend", str(tmp_path / "b"), str(tmp_path / "data"), "--out", str(tmp_path / "b"),
                 "--force", "--set", "blend.weights=[4.0]", "--set", "blend.eps=[0.3]"]) == 0
    again = DeepRetrieval.load(tmp_path / "b")
    assert (again.blend["w"], again.blend["eps"], again.config.beam.B) == (4.0, 0.3, 5)
    assert again.blend_scorer is not None


@pytest.mark.parametrize("case, msg", [
    ("structure", "only blend.*, beam.* may be set here"),
    ("no-scorer", "has no blend.scorer"),
    ("other-items", "are not the model's"),
    ("exists", "not replacing it"),
    ("bad-weight", "blend.weights"),
])
def test_cli_blend_refuses_bad_inputs_before_writing(plain, data, tmp_path, capsys, case, msg):
    from deep_retrieval.cli import main

    data.save(tmp_path / "data")
    plain.save(tmp_path / "m")
    out = tmp_path / "out"
    sets = {"structure": ["--set", f"blend.scorer={SPEC}", "--set", "structure.K=4"],
            "no-scorer": [],
            "bad-weight": ["--set", f"blend.scorer={SPEC}", "--set", "blend.weights=[-1.0]"]}.get(
                case, ["--set", f"blend.scorer={SPEC}"])
    source = tmp_path / "data"
    if case == "other-items":
        source = tmp_path / "other"
        synthetic_dataset(seed=6, n_items=data.n_items + 3).save(source)
    if case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main(["blend", str(tmp_path / "m"), str(source), "--out", str(out), *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


@pytest.mark.parametrize("name", [*FITTED, "popularity:after=true"])
def test_every_baseline_can_be_a_blend_scorer(name, plain, data, tmp_path):
    """Config checks a blend.scorer only by name: each baseline must score a candidate subset,
    and a model blended with it must save, load and rank as before."""
    assert type(baseline(name)).score_items is not Recommender.score_items
    assert Config.from_dict({"blend": {"scorer": name}}).blend.scorer == name
    plain.save(tmp_path / "p")
    m = DeepRetrieval.load(tmp_path / "p")  # a copy: fit_blend changes the model
    m.config.blend.scorer, m.config.blend.weights, m.config.blend.eps = name, (4.0,), (0.3,)
    m.fit_blend(data, log=quiet)
    m.save(tmp_path / "b")
    got = DeepRetrieval.load(tmp_path / "b")
    assert (got.blend["scorer"], got.blend["w"]) == (name, 4.0)
    hist = data.test.hist
    np.testing.assert_array_equal(got.recommend(hist, 5)[0], m.recommend(hist, 5)[0])
    assert getattr(got.blend_scorer, "after", False) == name.endswith("after=true")
