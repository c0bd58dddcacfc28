"""`dr train` with checkpoints: --resume, --checkpoint-every, --device."""

import pytest

from deep_retrieval.cli import main
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.state import data_fingerprint
from tests.test_contract import synthetic_dataset
from tests.test_resume import Stop, StopAt, config, fingerprint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-cli")
    data = synthetic_dataset(seed=3)
    data.save(root / "data")
    cfg = config()
    cfg.train.progress = False
    (root / "cfg.toml").write_text(cfg.to_toml())
    return root, data


def test_resume_ends_with_the_uninterrupted_model_and_removes_the_checkpoint(setup, capsys):
    root, data = setup
    assert main(["train", str(root / "data"), "--config", str(root / "cfg.toml"), "--out", str(root / "full"),
                 "--device", "cpu"]) == 0
    # a run stopped after its 5th batch left OUT.ckpt behind
    ckpt = root / "part.ckpt"
    cfg = config()
    cfg.train.progress = False
    with pytest.raises(Stop):
        DeepRetrieval(cfg).fit(data, log=lambda _: None, checkpoint=StopAt(ckpt, data_fingerprint(data), 5))
    # a fresh run on that output is refused: it would overwrite the unfinished run's checkpoint
    assert main(["train", str(root / "data"), "--config", str(root / "cfg.toml"),
                 "--out", str(root / "part")]) == 2
    assert "--resume" in capsys.readouterr().err
    # --resume with a config is refused (the checkpoint holds the run's config)
    assert main(["train", str(root / "data"), "--config", str(root / "cfg.toml"), "--out", str(root / "part"),
                 "--resume"]) == 2
    assert main(["train", str(root / "data"), "--out", str(root / "part"), "--resume"]) == 0
    assert not ckpt.exists()
    a, b = DeepRetrieval.load(root / "full"), DeepRetrieval.load(root / "part")
    assert fingerprint(a) == fingerprint(b)


def test_resume_without_a_checkpoint_is_one_error(setup, capsys):
    root, _ = setup
    assert main(["train", str(root / "data"), "--out", str(root / "none"), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no checkpoint" in err[0]
    assert not (root / "none").exists()


@pytest.mark.parametrize("device, message", [("tpu", "unknown device"), ("cuda", "no CUDA GPU")])
def test_bad_device_is_refused_before_any_work(setup, capsys, device, message):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    root, _ = setup
    assert main(["train", str(root / "data"), "--out", str(root / "dev"), "--device", device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (root / "dev").exists()


def test_evaluate_on_a_device(setup, capsys):
    root, _ = setup
    model = root / "full"
    if not model.exists():
        cfg = str(root / "cfg.toml")
        assert main(["train", str(root / "data"), "--config", cfg, "--out", str(model)]) == 0
    assert main(["evaluate", str(root / "data"), "--methods", str(model), "--k", "5", "--device", "cpu"]) == 0
    assert "brute-force" in capsys.readouterr().out
    assert main(["evaluate", str(root / "data"), "--methods", str(model), "--device", "tpu"]) == 2
    assert "unknown device" in capsys.readouterr().err
