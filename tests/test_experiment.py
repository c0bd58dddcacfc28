"""`dr experiment`: results for every method and seed, mean ± std, reproducible, clean errors."""

import json

import numpy as np
import pytest

from deep_retrieval.cli import main
from deep_retrieval.errors import DRError
from deep_retrieval.experiment import ExperimentConfig, run, summarise
from tests.test_model import tiny_config

EXPERIMENT = """
name = "tiny"
dr_config = "tiny.toml"
seeds = [0, 1]
ks = [5, 10]
hnsw = true
[data]
inputs = ["log.csv"]
user_col = "user"
item_col = "item"
time_col = "t"
val_users = 5
test_users = 10
min_user_interactions = 3
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    rng = np.random.default_rng(0)
    lines = ["user,item,t"]
    for u in range(60):
        for t, i in enumerate(rng.choice(30, size=rng.integers(4, 12), replace=False)):
            lines.append(f"u{u},i{(i + u % 3 * 10) % 30},{t}")
    (root / "log.csv").write_text("\n".join(lines) + "\n")
    (root / "tiny.toml").write_text(tiny_config().to_toml())
    (root / "tiny_exp.toml").write_text(EXPERIMENT)
    return root


def test_writes_every_method_for_every_seed(setup, tmp_path):
    exp = ExperimentConfig.from_toml(setup / "tiny_exp.toml")
    out = run(exp, setup, tmp_path, log=lambda _: None)
    saved = json.loads((tmp_path / "tiny" / "results.json").read_text())
    assert saved["summary"] == out["summary"]
    methods = {"item-cf", "rp3beta", "ease", "popularity", "youtube-dnn", "dr", "dr-exact", "hnsw"}
    assert set(out["summary"]) == methods
    assert [r["seed"] for r in out["runs"]] == [None, 0, 1]
    for method in ("dr", "youtube-dnn"):
        cell = out["summary"][method]["5"]["recall"]
        per_seed = [r["recall"] for run_ in out["runs"] for r in run_["results"]
                    if r["method"] == method and r["k"] == 5]
        assert cell["n"] == 2
        assert cell["mean"] == pytest.approx(np.mean(per_seed))
        assert cell["std"] == pytest.approx(np.std(per_seed, ddof=1))
    table = (tmp_path / "tiny" / "table.md").read_text()
    assert "DR (beam + rerank)" in table and " ± " in table and "YouTube-DNN" in table


def test_same_seeds_same_numbers(setup, tmp_path):
    exp = ExperimentConfig.from_toml(setup / "tiny_exp.toml")
    exp.seeds = (3,)
    a = run(exp, setup, tmp_path / "a", log=lambda _: None)
    b = run(exp, setup, tmp_path / "b", log=lambda _: None)
    assert a["summary"] == b["summary"]


def test_summarise_single_seed_has_zero_std():
    rows = [{"method": "dr", "k": 10, "precision": 0.5, "recall": 0.25, "f1": 0.3, "ndcg": 0.4,
             "items_scored_per_user": 7.0}]
    s = summarise([{"results": rows}], [10])
    assert s["dr"]["10"]["recall"] == {"mean": 0.25, "std": 0.0, "n": 1}


def test_bad_inputs_fail_cleanly(setup, tmp_path, capsys):
    bad = setup / "bad.toml"
    bad.write_text(EXPERIMENT.replace('"log.csv"', '"missing.csv"'))
    assert main(["experiment", str(bad), "--data-root", str(setup), "--results", str(tmp_path)]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert not (tmp_path / "tiny").exists()
    bad.write_text(EXPERIMENT.replace("seeds = [0, 1]", "seeds = [0, 0]"))
    assert main(["experiment", str(bad), "--data-root", str(setup)]) == 2
    assert "distinct" in capsys.readouterr().err
    bad.write_text(EXPERIMENT + "colour = 1\n")
    assert main(["experiment", str(bad)]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["experiment", str(setup / "tiny_exp.toml"), "--set", "structure.K=1",
                 "--data-root", str(setup), "--results", str(tmp_path)]) == 2
    assert "structure.K" in capsys.readouterr().err
    assert not (tmp_path / "tiny").exists()


def test_results_are_written_after_every_seed(setup, tmp_path, monkeypatch):
    import deep_retrieval.experiment as experiment

    seen = []
    write = experiment._write

    def spy(*a, **kw):
        out = write(*a, **kw)
        seen.append((out["complete"], out["experiment"]["seeds"]))
        return out

    monkeypatch.setattr(experiment, "_write", spy)
    exp = ExperimentConfig.from_toml(setup / "tiny_exp.toml")
    run(exp, setup, tmp_path, log=lambda _: None)
    assert seen == [(False, [0]), (True, [0, 1])]


def test_twin_trains_as_many_epochs_as_the_softmax_model_dr_serves():
    from deep_retrieval.experiment import twin_config

    joint = [{"epoch": e, "phase": "joint"} for e in (1, 2, 3, 4, 5)]
    dr_only = [{"epoch": 6, "phase": "dr"}]
    fixed = tiny_config(train__epochs_joint=5)
    assert twin_config(fixed, joint + dr_only) is fixed  # no early stopping: DR's own config
    early = tiny_config(train__epochs_joint=30, train__patience=3)
    assert twin_config(early, joint + dr_only).train.epochs_joint == 5  # stopped after 5
    joint[-1]["restored_epoch"] = 2
    got = twin_config(early, joint + dr_only)
    assert got.train.epochs_joint == 2 and early.train.epochs_joint == 30  # rolled back to 2; a copy
    assert got.structure == early.structure and got.train.lr == early.train.lr


def test_without_dr_config_dr_trains_with_the_defaults(setup):
    """No dr_config: the defaults, as `dr train` without --config (not a built-in config)."""
    from deep_retrieval.config import Config

    (setup / "bare.toml").write_text(EXPERIMENT.replace('dr_config = "tiny.toml"\n', ""))
    exp = ExperimentConfig.from_toml(setup / "bare.toml")
    want = Config()
    want.train.seed, want.train.progress = 1, False
    assert exp.dr(1).to_dict() == want.to_dict()


def test_more_baselines_get_their_own_rows(setup, tmp_path):
    exp = ExperimentConfig.from_toml(setup / "tiny_exp.toml")
    exp.seeds, exp.hnsw, exp.baselines = (0,), False, ("popularity:after=true",)
    out = run(exp, setup, tmp_path, log=lambda _: None)
    assert "popularity:after=true" in out["summary"]
    assert "| popularity:after=true |" in (tmp_path / "tiny" / "table.md").read_text()
    exp.baselines = ("popularity:before=true",)
    with pytest.raises(DRError, match="before"):
        exp.validate()
