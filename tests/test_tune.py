"""`dr tune`: the search on validation users, its outputs, resuming, the space file, the output check."""

import copy
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

optuna = pytest.importorskip("optuna")

from deep_retrieval.artifacts import HOST_TAG  # noqa: E402
from deep_retrieval.cli import main  # noqa: E402
from deep_retrieval.config import Config  # noqa: E402
from deep_retrieval.data.dataset import Dataset, Ragged, Split  # noqa: E402
from deep_retrieval.errors import DRError  # noqa: E402
from deep_retrieval.evaluate import evaluate  # noqa: E402
from deep_retrieval.model import DeepRetrieval  # noqa: E402
from deep_retrieval.tune import DEFAULT_SPACE, Space, parse_metric, run_tune, trial_config  # noqa: E402

from .test_contract import synthetic_dataset  # noqa: E402

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
max_seq_len = 10
[reranker]
negatives = 10
[em]
S = 4
alpha = 1e-3
T = 2
[beam]
B = 3
[train]
epochs_joint = 1
epochs_dr = 1
batch_size = 64
threads = 1
progress = false
"""

SPACE = """
"em.alpha" = {low = 1e-5, high = 1e-1, log = true}
"beam.B" = {low = 1, high = 9}
"train.lr" = {low = 1e-3, high = 3e-2, log = true}
[reranker]
similarity = {choices = ["dot", "cosine"]}
"""


def quiet(_):
    pass


class NoTestUsers(Dataset):
    """A data set whose test split cannot be read."""

    @property
    def test(self):
        raise AssertionError("the test split was read")


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(seed=5, n_items=300, n_train=150)


@pytest.fixture(scope="module")
def files(tmp_path_factory, ds):
    root = tmp_path_factory.mktemp("tune-inputs")
    ds.save(root / "data")
    (root / "tiny.toml").write_text(TINY)
    (root / "space.toml").write_text(SPACE)
    return root


def tune_cli(files, out, *extra):
    return main(["tune", str(files / "data"), "--config", str(files / "tiny.toml"), "--space",
                 str(files / "space.toml"), "--out", str(out), *extra])


def load_study(out):
    return optuna.load_study(study_name="dr-tune", storage=f"sqlite:///{out / 'study.sqlite3'}")


def test_cli_writes_study_best_config_and_table(files, ds, tmp_path, capsys):
    out = tmp_path / "tune"
    assert tune_cli(files, out, "--trials", "3") == 0
    summary = json.loads((out / "tune.json").read_text())
    assert summary["n_trials"] == 3 and summary["states"]["complete"] == 3
    values = [t["value"] for t in summary["trials"]]
    best = summary["best"]
    assert best["value"] == max(values) and values[best["trial"]] == best["value"]
    assert [t.value for t in load_study(out).trials] == values
    # best.toml = the base config with the best trial's values, and it reproduces its metric
    cfg = Config.from_toml(out / "best.toml")
    assert set(best["params"]) == {"em.alpha", "beam.B", "train.lr", "reranker.similarity"}
    for key, v in best["params"].items():
        table, name = key.split(".")
        assert getattr(getattr(cfg, table), name) == v
    base = Config.from_toml(files / "tiny.toml")
    assert cfg == trial_config(base, best["params"])
    model = DeepRetrieval(cfg).fit(ds, log=quiet)
    rows = evaluate(ds, {"dr": model}, ks=[20], split="val", latency_users=0)["results"]
    assert rows[0]["recall"] == pytest.approx(best["value"], abs=1e-12)
    table = (out / "trials.md").read_text().splitlines()
    assert table[2] == "| trial | params | recall@20 | seconds | state |"
    assert [r.split("|")[1].strip() for r in table[4:]] == ["0", "1", "2"]
    assert all(r.rstrip().endswith("| complete |") for r in table[4:])
    assert f"{values[0]:.4f}" in table[4]
    captured = capsys.readouterr()
    assert "best recall@20" in captured.out and "trial 2: recall@20 = " in captured.out
    assert "dr tune: 100%" in captured.err and "3/3" in captured.err  # the progress bar


def test_no_test_user_is_read(ds, tmp_path):
    guarded = copy.copy(ds)
    guarded.__class__ = NoTestUsers  # the same data, but reading .test raises
    with pytest.raises(AssertionError, match="test split was read"):
        guarded.test  # noqa: B018  (the guard works)
    space = Space.from_dict({"beam.B": {"low": 1, "high": 9}})
    summary = run_tune(guarded, Config.from_dict(_tiny()), tmp_path / "t", trials=2, metric="ndcg@10",
                       space=space, log=quiet, progress=False)
    assert summary["states"]["complete"] == 2 and summary["metric"] == "ndcg@10"
    assert all(0 <= t["value"] <= 1 for t in summary["trials"])


def test_no_validation_truth_is_refused(ds, tmp_path):
    empty = Split(ds.val.users, ds.val.hist, Ragged.from_lists([[] for _ in ds.val.users]))
    with pytest.raises(DRError, match="no validation user with ground truth"):
        run_tune(dataclasses.replace(ds, val=empty), Config.from_dict(_tiny()), tmp_path / "t", trials=1,
                 log=quiet, progress=False)
    assert not (tmp_path / "t").exists()


def test_rerun_continues_to_n_trials(files, tmp_path):
    out = tmp_path / "tune"
    assert tune_cli(files, out, "--trials", "2") == 0
    first = json.loads((out / "tune.json").read_text())["trials"]
    assert tune_cli(files, out, "--trials", "3") == 0  # no --force needed: it continues
    trials = load_study(out).trials
    assert [t.number for t in trials] == [0, 1, 2]
    summary = json.loads((out / "tune.json").read_text())
    assert summary["trials"][:2] == first and summary["n_trials"] == 3
    assert tune_cli(files, out, "--trials", "3") == 0  # already there: nothing to do
    assert len(load_study(out).trials) == 3
    assert tune_cli(files, out, "--trials", "1", "--force") == 0  # --force starts afresh
    assert len(load_study(out).trials) == 1


def test_rerun_with_another_setup_is_refused(files, tmp_path, capsys):
    out = tmp_path / "tune"
    assert tune_cli(files, out, "--trials", "1") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert tune_cli(files, out, "--trials", "2", "--metric", "ndcg@20") == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "another setup (different metric)" in err and err.count("\n") == 1
    assert tune_cli(files, out, "--trials", "2", "--set", "structure.K=4") == 2
    assert "(different config)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_killed_trial_is_run_again_with_its_values(files, tmp_path):
    out = tmp_path / "tune"
    assert tune_cli(files, out, "--trials", "1") == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = load_study(out)
    stale = study.ask()  # as a killed run leaves it: RUNNING, owned by a process that is gone
    stale.set_user_attr("pid", dead.pid)
    stale.set_user_attr("host", HOST_TAG)
    params = {p.key: p.suggest(stale) for p in Space.from_toml(files / "space.toml").params}
    assert tune_cli(files, out, "--trials", "2") == 0
    trials = load_study(out).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params == params


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_or_broken_trial_fails_and_outputs_stay_consistent(ds, tmp_path, monkeypatch, error):
    def fit(self, dataset, **kw):
        raise error("boom")

    space, out = Space.from_dict({"beam.B": {"low": 1, "high": 9}}), tmp_path / "t"
    with monkeypatch.context() as m:
        m.setattr(DeepRetrieval, "fit", fit)
        with pytest.raises(error):
            run_tune(ds, Config.from_dict(_tiny()), out, trials=2, space=space, log=quiet, progress=False)
    summary = json.loads((out / "tune.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["fail"]
    interrupted = error is KeyboardInterrupt
    assert summary["trials"][0]["note"] == ("interrupted" if interrupted else "RuntimeError: boom")
    assert "| fail: " in (out / "trials.md").read_text()
    summary = run_tune(ds, Config.from_dict(_tiny()), out, trials=1, space=space, log=quiet, progress=False)
    assert [t["state"] for t in summary["trials"]] == ["fail", "complete"]
    # an interrupted trial runs again with its values; a broken one (a bug) is not retried
    assert summary["trials"][1]["note"] == ("rerun of trial 0" if interrupted else "")
    if interrupted:
        assert summary["trials"][1]["params"] == summary["trials"][0]["params"]


def test_invalid_samples_are_pruned(ds, tmp_path):
    space = Space.from_dict({"structure.J": {"choices": [10, 20]}})  # J > K^D = 9: never valid
    logs = []
    summary = run_tune(ds, Config.from_dict(_tiny()), tmp_path / "t", trials=2, space=space,
                       log=logs.append, progress=False)
    assert summary["states"] == {"complete": 0, "pruned": 2, "fail": 0, "running": 0}
    assert summary["best"] is None and not (tmp_path / "t" / "best.toml").exists()
    assert all("structure.J must be in [1, K^D]" in t["note"] for t in summary["trials"])
    assert "no trial completed (2 pruned)" in logs[-1]


def test_timeout_stops_starting_trials(files, tmp_path):
    out = tmp_path / "tune"
    assert tune_cli(files, out, "--trials", "3", "--timeout", "0.0001") == 0
    assert len(load_study(out).trials) == 1


@pytest.mark.parametrize("kind", ["foreign", "model", "file"])
def test_output_check_refuses_and_touches_nothing(files, tmp_path, capsys, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("mine")
    else:
        out.mkdir()
        if kind == "foreign":
            (out / "notes.txt").write_text("mine")
        else:
            (out / "meta.json").write_text('{"format_version": 1}')
            (out / "config.toml").write_text(TINY)
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_text()
    assert tune_cli(files, out, "--trials", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output") and err.count("\n") == 1
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_text()) == before


def test_output_inside_input_or_equal_to_it_is_refused(files, capsys):
    assert tune_cli(files, files / "data", "--trials", "1") == 2
    assert "is one of the inputs" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ('"em.alpa" = {low = 1, high = 2}', "unknown key 'em.alpa'; known in [em]"),
    ('"emm.alpha" = {low = 1, high = 2}', "unknown key 'emm.alpha'; keys are TABLE.KEY"),
    ('"em.alpha" = {low = 0.1, high = 0.01}', "bad range: low (0.1) must be < high (0.01)"),
    ('"em.alpha" = {low = 0.0, high = 0.01, log = true}', "a log range needs low > 0"),
    ('"beam.B" = {low = 1.5, high = 9}', "an integer key needs integer low and high"),
    ('"beam.B" = {low = 1}', "a range needs both low and high"),
    ('"beam.B" = {low = 1, high = 9, step = 2}', "unknown field(s) ['step']"),
    ('"beam.B" = {choices = [1, 2], low = 1}', "either choices or low/high"),
    ('"beam.B" = {choices = []}', "choices must be a non-empty list"),
    ('"beam.B" = {choices = [2, "x"]}', "expected int, got str 'x'"),
    ('"reranker.similarity" = {choices = ["dot", "cos"]}', "'cos' is not one of ['dot', 'cosine']"),
    ('"reranker.similarity" = {low = 1, high = 2}', "key takes choices = [...], not a range"),
    ('"structure.hidden" = {choices = [1]}', "a list-valued key cannot be searched"),
    ('"train.seed" = {low = 0, high = 9}', "not a hyper-parameter"),
    ('"beam.B" = 5', "expected {low"),
    ("", "names no config key to search"),
])
def test_space_file_errors(tmp_path, text, message):
    f = tmp_path / "space.toml"
    f.write_text(text)
    with pytest.raises(DRError, match=None) as e:
        Space.from_toml(f)
    assert message in str(e.value) and "\n" not in str(e.value) and str(f) in str(e.value)


def test_space_file_error_in_cli_is_one_line_before_any_work(files, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('"em.alpha" = {low = 1, high = 1}')
    out = tmp_path / "out"
    assert main(["tune", str(files / "data"), "--trials", "1", "--space", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: search space") and "bad range" in err and err.count("\n") == 1
    assert not out.exists()


def test_space_reads_both_spellings_and_default_is_valid():
    alpha, B = {"low": 1e-5, "high": 1e-1, "log": True}, {"low": 1, "high": 9}
    a = Space.from_dict({"em.alpha": alpha, "beam.B": B})
    b = Space.from_dict({"em": {"alpha": alpha}, "beam": {"B": B}})  # [table] spelling
    assert a == b and [p.kind for p in a.params] == ["float", "int"]
    default = Space.default()
    assert [p.key for p in default.params] == list(DEFAULT_SPACE)
    base = Config()
    for edge in ("low", "high"):  # every corner of the default space is a valid config
        params = {p.key: (getattr(p, edge) if p.kind != "choice" else p.choices[0 if edge == "low" else -1])
                  for p in default.params}
        cfg = trial_config(base, params)
        assert cfg.beam.B == params["beam.B"] and cfg.reranker.similarity == params["reranker.similarity"]


@settings(max_examples=50, deadline=None)
@given(low=st.floats(-10, 10), width=st.floats(-5, 5), log=st.booleans(), ilow=st.integers(-5, 50),
       iwidth=st.integers(-5, 50))
def test_space_ranges_round_trip_or_are_refused(low, width, log, ilow, iwidth):
    """A range is kept exactly as given when low < high (and low > 0 for log), refused otherwise."""
    for key, lo, hi in (("em.alpha", low, low + width), ("beam.B", ilow, ilow + iwidth)):
        spec = {key: {"low": lo, "high": hi, "log": log}}
        if lo < hi and (lo > 0 or not log):
            space = Space.from_dict(spec)
            assert space.to_dict() == spec and Space.from_dict(space.to_dict()) == space
        else:
            with pytest.raises(DRError, match="bad range"):
                Space.from_dict(spec)


@pytest.mark.parametrize("text, expected", [("recall@20", ("recall", 20)), ("ndcg@5", ("ndcg", 5)),
                                            ("precision@1", ("precision", 1)), ("hit@200", ("hit", 200))])
def test_parse_metric(text, expected):
    assert parse_metric(text) == expected


@pytest.mark.parametrize("text", ["recall", "recall@0", "recall@x", "mrr@10", "@10", "recall@-1"])
def test_parse_metric_refuses(text):
    with pytest.raises(DRError, match="--metric must be NAME@K"):
        parse_metric(text)


def test_missing_optuna_is_one_line(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    out = tmp_path / "out"
    assert tune_cli(files, out, "--trials", "1") == 2
    assert capsys.readouterr().err == "error: dr tune needs optuna: pip install 'deep-retrieval[tune]'\n"
    assert not out.exists()


def _tiny() -> dict:
    import tomllib

    return tomllib.loads(TINY)


def test_trial_config_is_the_base_plus_params():
    base = Config.from_dict(_tiny())
    cfg = trial_config(base, {"em.alpha": 0.5, "beam.B": 7})
    assert cfg.em.alpha == 0.5 and cfg.beam.B == 7
    cfg.em.alpha, cfg.beam.B = base.em.alpha, base.beam.B
    assert cfg == base
    with pytest.raises(DRError, match="beam.B must be >= 1"):
        trial_config(base, {"beam.B": 0})
    assert np.isclose(base.em.alpha, 1e-3)
