"""Config: TOML round trip, strict keys and types, the built-in configs."""

import tomllib
from importlib import resources

import pytest

from deep_retrieval.config import Config, load_config
from deep_retrieval.errors import DRError


def test_toml_round_trip():
    cfg = Config()
    cfg.structure.K, cfg.structure.hidden, cfg.em.alpha, cfg.encoder.kind = 7, (32, 16), 1e-4, "mean"
    back = Config.from_dict(tomllib.loads(cfg.to_toml()))
    assert back == cfg


def test_partial_tables_keep_defaults():
    cfg = Config.from_dict({"beam": {"B": 3}})
    assert cfg.beam.B == 3 and cfg.structure == Config().structure


@pytest.mark.parametrize(
    "d, message",
    [
        ({"structur": {}}, "unknown key"),
        ({"structure": {"k": 3}}, "unknown key"),
        ({"structure": {"K": "3"}}, "expected int"),
        ({"structure": {"K": True}}, "expected int"),
        ({"structure": {"hidden": 3}}, "expected a list"),
        ({"encoder": {"kind": "lstm"}}, "not one of"),
        ({"structure": {"K": 1}}, "K must be"),
        ({"structure": {"K": 2, "D": 2, "J": 5}}, "J must be"),
        ({"em": {"eta": 1.5}}, "eta"),
        ({"em": {"penalty_power": 1}}, "convex"),
        ({"beam": {"B": 0}}, "B must be"),
    ],
)
def test_bad_configs(d, message):
    with pytest.raises(DRError, match=message):
        Config.from_dict(d)


def test_int_accepted_for_float():
    assert Config.from_dict({"em": {"alpha": 0}}).em.alpha == 0.0


def test_builtin_configs_load():
    names = [f.name[:-5] for f in (resources.files("deep_retrieval") / "configs").iterdir()
             if f.name.endswith(".toml")]
    assert {"demo", "ml1m", "paper-ml20m", "paper-amazon"} <= set(names)
    for n in names:
        Config.builtin(n)
    paper = Config.builtin("paper-amazon")
    assert (paper.structure.K, paper.structure.D, paper.beam.B, paper.structure.J, paper.em.alpha) == (
        100, 3, 50, 3, 3e-7)
    with pytest.raises(DRError, match="no built-in config"):
        Config.builtin("nope")


def test_a_folder_named_like_a_builtin_config_is_not_read_as_one(tmp_path, monkeypatch):
    """`--config ml1m` run next to a prepared data set called ml1m/ means the built-in config."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ml1m").mkdir()
    assert load_config("ml1m") == Config.builtin("ml1m")
    (tmp_path / "mine").write_text("[beam]\nB = 7\n")  # a TOML file without the suffix still is one
    assert load_config("mine").beam.B == 7


def test_from_toml_errors(tmp_path):
    with pytest.raises(DRError, match="not found"):
        Config.from_toml(tmp_path / "x.toml")
    (tmp_path / "bad.toml").write_text("[structure\nK=3")
    with pytest.raises(DRError, match="not valid TOML"):
        Config.from_toml(tmp_path / "bad.toml")
