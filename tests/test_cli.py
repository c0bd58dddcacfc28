"""The `dr` command end to end on tiny data: exit codes, one-line errors, no partial output."""

import json

import numpy as np
import pytest

from deep_retrieval.cli import main
from deep_retrieval.data.dataset import Dataset
from deep_retrieval.data.latent import LatentTruth
from deep_retrieval.model import DeepRetrieval

TINY = """
[structure]
K = 3
D = 2
J = 2
hidden = [16]
[encoder]
kind = "mean"
e = 8
item_dim = 8
[em]
S = 4
alpha = 1e-3
[beam]
B = 3
[train]
epochs_joint = 1
epochs_dr = 1
batch_size = 64
progress = false
"""


def write_log(path, n_users=40, n_items=30, seed=0):
    rng = np.random.default_rng(seed)
    lines = ["user,item,rating,ts"]
    for u in range(n_users):
        for t, i in enumerate(rng.choice(n_items, size=rng.integers(12, 20), replace=False)):
            lines.append(f"u{u},{100 + i},{rng.integers(3, 6)},{1000 + t}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    log = write_log(d / "log.csv")
    assert main(["prepare", str(log), "--out", str(d / "data"), "--format", "csv",
                 "--min-rating", "3", "--val-users", "5", "--test-users", "5"]) == 0
    (d / "tiny.toml").write_text(TINY)
    assert main(["train", str(d / "data"), "--config", str(d / "tiny.toml"),
                 "--out", str(d / "model")]) == 0
    return d


def test_prepare_writes_a_dataset(workdir):
    ds = Dataset.load(workdir / "data")
    assert len(ds.val) == 5 and len(ds.test) == 5
    assert ds.manifest["protocol"]


def test_evaluate_json(workdir, capsys):
    out = workdir / "res.json"
    assert main(["evaluate", str(workdir / "data"), "--methods",
                 f"{workdir / 'model'},item-cf,popularity", "--k", "3,5", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    methods = {(r["method"], r["k"]) for r in res["results"]}
    for m in ("dr", "brute-force", "item-cf", "popularity"):
        assert (m, 3) in methods and (m, 5) in methods
    assert res["split"] == "test" and res["n_users"] == 5
    assert "item-cf" in capsys.readouterr().out


def test_retrieve_original_ids(workdir, capsys):
    assert main(["retrieve", str(workdir / "model"), "--history", "101,102,103", "--k", "4",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 1 <= len(out["items"]) <= 4
    model = DeepRetrieval.load(workdir / "model")
    assert all(str(x["item"]) in set(map(str, model.item_ids.tolist())) for x in out["items"])


def test_train_with_overrides(workdir):
    out = workdir / "model2"
    assert main(["train", str(workdir / "data"), "--config", str(workdir / "tiny.toml"),
                 "--set", "structure.K=4", "--set", "train.epochs_dr=0", "--out", str(out)]) == 0
    assert DeepRetrieval.load(out).config.structure.K == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["prepare", "missing.csv", "--out", "{d}/x"], "not found"),
        (["prepare", "{d}/log.csv", "--out", "{d}/x", "--protocol", "nope"], "unknown protocol"),
        (["prepare", "{d}/log.csv", "--out", "{d}/x", "--format", "nope"], "unknown format"),
        (["prepare", "{d}/log.csv", "--out", "{d}/x", "--val-users", "30", "--test-users", "30"],
         "users"),
        (["train", "{d}/nodata", "--out", "{d}/x"], "not found"),
        (["train", "{d}/data", "--out", "{d}/x", "--config", "nope"], "no built-in config"),
        (["train", "{d}/data", "--out", "{d}/x", "--set", "structure.Q=3"], "unknown key"),
        (["train", "{d}/data", "--out", "{d}/x", "--set", "structure.K=abc"], "expected int"),
        (["evaluate", "{d}/data", "--methods", "magic"], "unknown method"),
        (["evaluate", "{d}/data", "--methods", "popularity", "--k", "a"], "integers"),
        (["retrieve", "{d}/model", "--history", "99999"], "not in the model"),
        (["retrieve", "{d}/nomodel", "--history", "1"], "not found"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(workdir, capsys, args, message):
    args = [a.format(d=workdir) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (workdir / "x").exists()


def test_usage_error_exits_2(capsys):
    assert main(["prepare"]) == 2
    assert main(["no-such-command"]) == 2


def test_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("prepare", "synth", "train", "evaluate", "retrieve", "serve", "demo"):
        assert cmd in out


def test_synth_cli(tmp_path):
    out = tmp_path / "syn"
    assert main(["synth", "--out", str(out), "--items", "300", "--users", "200",
                 "--interactions", "4000", "--val-users", "20", "--test-users", "20"]) == 0
    ds = Dataset.load(out)
    assert ds.n_items == 300 and len(ds.test) == 20
    assert (out / "planted.npz").is_file()
    assert main(["synth", "--out", str(tmp_path / "bad"), "--items", "0"]) == 2
    assert not (tmp_path / "bad").exists()


def test_synth_cli_latent(tmp_path, capsys):
    out = tmp_path / "lat"
    assert main(["synth", "--preset", "latent", "--out", str(out), "--items", "300", "--users", "200",
                 "--interactions", "4000", "--val-users", "20", "--test-users", "20", "--dim", "4"]) == 0
    assert Dataset.load(out).n_items == 300
    assert LatentTruth.load(out).item_factors.shape == (300, 4)
    assert main(["synth", "--preset", "latent", "--out", str(out), "--force", "--items", "400", "--users",
                 "200", "--interactions", "4000", "--val-users", "20", "--test-users", "20"]) == 0
    assert Dataset.load(out).n_items == 400  # --force replaces a synthetic data set
    capsys.readouterr()
    for args, msg in ((["--preset", "latent", "--clusters", "5"], "--clusters: not used by --preset latent"),
                      (["--beta", "2"], "--beta: not used by --preset default"),
                      (["--preset", "latent", "--dim", "0"], "dim must be >= 1")):
        assert main(["synth", "--out", str(tmp_path / "bad"), *args]) == 2
        assert msg in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    for f in ("report.md", "results.json", "paths.png", "training.png", "model/config.toml"):
        assert (out / f).is_file(), f
    res = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in res["results"]} == {"dr", "brute-force", "dr+blend", "blend", "item-cf",
                                                     "rp3beta", "ease", "popularity"}
    # the baselines were tuned on the validation users, and the blend is the tuned RP3beta
    assert res["tuned"]["item-cf"]["params"]["shrink"] in (0.0, 10.0)
    assert res["tuned"]["ease"]["params"]["l2"] in (200.0, 500.0)
    beta = res["tuned"]["rp3beta"]["params"]["beta"]
    assert res["blend"]["scorer"] == f"rp3beta:alpha=0.5,beta={beta}"
    assert res["blend"]["exclude_history"] and res["blend"]["w"] in (0.0, 0.25, 1.0, 4.0, 16.0, 64.0)
    assert {r["k"] for r in res["results"]} == {10, 50} and res["exclude_history"]
    assert -1 <= res["planted"]["path_cohesion_shuffled"] < res["planted"]["path_cohesion"] <= 1
    assert DeepRetrieval.load(out / "model").n_items == 1000


def test_evaluate_beam(workdir):
    out = {}
    for B in (1, 9):
        f = workdir / f"res_b{B}.json"
        assert main(["evaluate", str(workdir / "data"), "--methods", str(workdir / "model"), "--k", "3",
                     "--beam", str(B), "--json", str(f)]) == 0
        rows = json.loads(f.read_text())["results"]
        out[B] = next(r["items_scored_per_user"] for r in rows if r["method"] == "dr")
    assert out[1] < out[9]  # a wider beam reaches more paths (K = 3, D = 2: 9 paths)


def test_evaluate_rerank_and_blend(workdir, capsys):
    out = workdir / "res_blend.json"
    assert main(["evaluate", str(workdir / "data"), "--methods", f"{workdir / 'model'},rp3beta",
                 "--k", "3,5", "--rerank", "rp3beta", "--blend", "0.5,2", "--blend-eps", "0.01,0.1",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "blend: w " in printed and "validation recall@3" in printed
    res = json.loads(out.read_text())
    methods = {r["method"] for r in res["results"]}
    assert {"dr", "rp3beta", "dr+rp3beta", "blend", "dr+blend"} <= methods
    pick = res["blends"]["dr"]
    tried = [(r["w"], r["eps"]) for r in pick["validation"]]
    assert tried == [(0.5, 0.01), (2.0, 0.01), (0.5, 0.1), (2.0, 0.1)]
    best = max(pick["validation"], key=lambda r: r["recall"])
    assert (pick["w"], pick["eps"]) == (best["w"], best["eps"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--blend", "0.5"], "--blend needs --rerank"),
        (["--rerank", "rp3beta", "--blend", "a,b"], "comma-separated numbers"),
        (["--rerank", "rp3beta", "--blend", "0.5", "--blend-eps", "0"], "must be > 0"),
        (["--rerank", "rp3beta", "--blend", "0.5", "--split", "val"], "--split test"),
        (["--rerank", "nope"], "unknown baseline"),
    ],
)
def test_evaluate_rerank_bad_options(workdir, capsys, extra, message):
    assert main(["evaluate", str(workdir / "data"), "--methods", str(workdir / "model"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_evaluate_rerank_needs_a_model(workdir, capsys):
    assert main(["evaluate", str(workdir / "data"), "--methods", "item-cf", "--rerank", "rp3beta"]) == 2
    assert "trained model directory" in capsys.readouterr().err


def test_beam_reports_every_b_and_writes_a_model_serving_at_the_pick(workdir, capsys):
    data, model = workdir / "data", workdir / "model"
    out, js = workdir / "model_beam", workdir / "beam.json"
    assert main(["beam", str(data), str(model), "--beams", "9,1,2", "--k", "3,5", "--target", "0.01",
                 "--json", str(js), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    res = json.loads(js.read_text())
    assert [r["B"] for r in res["rows"]] == [1, 2, 9] and res["split"] == "val"
    assert res["B"] == 1 and "pick: B = 1," in text  # every ratio of B = 1 is >= 0.01
    assert res["rows"][-1]["ratio"] == {"3": pytest.approx(1.0), "5": pytest.approx(1.0)}  # B = K^D
    served = DeepRetrieval.load(out)
    assert served.config.beam.B == 1
    np.testing.assert_array_equal(served.assignment, DeepRetrieval.load(model).assignment)
    assert DeepRetrieval.load(model).config.beam.B == 3  # the input is not touched
