"""Checkpoint and resume: a run stopped anywhere and resumed ends with the same model, bit for bit."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deep_retrieval.errors import DRError
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.state import Checkpointer, TrainState, data_fingerprint, load_checkpoint
from tests.test_contract import synthetic_dataset
from tests.test_model import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def fingerprint(model: DeepRetrieval) -> str:
    """sha256 of every weight, the assignment and the score table."""
    h = hashlib.sha256()
    for k, v in sorted(model.net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(np.ascontiguousarray(model.assignment).tobytes())
    h.update(model.scores.paths.tobytes())
    h.update(model.scores.scores.tobytes())
    return h.hexdigest()


class Stop(Exception):
    pass


class StopAt(Checkpointer):
    """Checkpoints after every batch and stops the run after step ``stop_at``'s checkpoint."""

    def __init__(self, path, fp, stop_at: int):
        super().__init__(path, fp, minutes=0, every_batches=1)
        self.stop_at = stop_at

    def maybe(self, state):
        super().maybe(state)
        if state.progress.step == self.stop_at:
            raise Stop


def config():
    # an M-step every 4 batches across epochs, and one per epoch would not show the window
    # being carried over; sparse embeddings exercise SparseAdam's state too
    return tiny_config(em__mstep_every=4, train__sparse_embeddings="yes", train__epochs_joint=2)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(seed=3)


@pytest.fixture(scope="module")
def uninterrupted(data):
    return fingerprint(DeepRetrieval(config()).fit(data, log=lambda _: None))


def n_batches_per_epoch(data) -> int:
    return -(-len(data.example_positions()) // config().train.batch_size)


@pytest.mark.parametrize("where", ["first batch", "mid epoch", "last batch of an epoch", "phase 2"])
def test_stopped_and_resumed_equals_uninterrupted(data, uninterrupted, tmp_path, where):
    n = n_batches_per_epoch(data)
    stop_at = {"first batch": 1, "mid epoch": n // 2 + 1, "last batch of an epoch": n,
               "phase 2": 2 * n + 2}[where]
    ckpt = tmp_path / "run.ckpt"
    fp = data_fingerprint(data)
    with pytest.raises(Stop):
        DeepRetrieval(config()).fit(data, log=lambda _: None, checkpoint=StopAt(ckpt, fp, stop_at))
    assert load_checkpoint(ckpt, data).progress.step == stop_at
    # resumed: the config comes from the checkpoint, not from the object
    resumed = DeepRetrieval().fit(data, log=lambda _: None, resume=ckpt,
                                  checkpoint=Checkpointer(ckpt, fp, minutes=0))
    assert fingerprint(resumed) == uninterrupted
    assert [e["epoch"] for e in resumed.log] == [1, 2, 3]


def test_resumed_twice_equals_uninterrupted(data, uninterrupted, tmp_path):
    ckpt, fp = tmp_path / "run.ckpt", data_fingerprint(data)
    n = n_batches_per_epoch(data)
    with pytest.raises(Stop):
        DeepRetrieval(config()).fit(data, log=lambda _: None, checkpoint=StopAt(ckpt, fp, 3))
    with pytest.raises(Stop):
        DeepRetrieval().fit(data, log=lambda _: None, resume=ckpt, checkpoint=StopAt(ckpt, fp, n + 3))
    resumed = DeepRetrieval().fit(data, log=lambda _: None, resume=ckpt)
    assert fingerprint(resumed) == uninterrupted


def test_checkpoint_of_other_data_or_garbage_is_refused(data, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Stop):
        fp = data_fingerprint(data)
        DeepRetrieval(config()).fit(data, log=lambda _: None, checkpoint=StopAt(ckpt, fp, 2))
    other = synthetic_dataset(seed=4)
    with pytest.raises(DRError, match="other data"):
        DeepRetrieval().fit(other, resume=ckpt)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(DRError, match="unreadable"):
        DeepRetrieval().fit(data, resume=tmp_path / "junk.ckpt")
    with pytest.raises(DRError, match="no checkpoint"):
        DeepRetrieval().fit(data, resume=tmp_path / "missing.ckpt")


def test_a_checkpoint_holds_the_whole_state(data, tmp_path):
    ckpt, fp = tmp_path / "run.ckpt", data_fingerprint(data)
    state = TrainState.new(config(), data)
    from deep_retrieval.train import train

    with pytest.raises(Stop):
        train(state, data, log=lambda _: None, checkpoint=StopAt(ckpt, fp, 5))
    back = load_checkpoint(ckpt, data)
    np.testing.assert_array_equal(back.assignment, state.assignment)
    np.testing.assert_array_equal(back.scores.paths, state.scores.paths)
    np.testing.assert_array_equal(back.order, state.order)
    assert back.progress == state.progress
    assert [w.tolist() for w in back.window] == [w.tolist() for w in state.window]
    assert back.rng.bit_generator.state == state.rng.bit_generator.state
    for (k, a), (_, b) in zip(back.net.state_dict().items(), state.net.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    for oa, ob in zip(back.opts, state.opts, strict=True):
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for name in sa[i]:
                a, b = sa[i][name], sb[i][name]
                assert torch.equal(a, b) if torch.is_tensor(a) else a == b, (i, name)


# ---------------------------------------------------------------------- SIGKILL
TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from deep_retrieval.model import DeepRetrieval
    from deep_retrieval.state import Checkpointer, data_fingerprint
    from tests.test_resume import config
    from tests.test_contract import synthetic_dataset

    data = synthetic_dataset(seed=3)
    cfg = config()
    cfg.train.threads = 1
    cfg.train.epochs_joint, cfg.train.epochs_dr = 4, 2  # 30 batches: room for two kills
    resume = sys.argv[2] if len(sys.argv) > 2 else None
    ck = Checkpointer(sys.argv[1], data_fingerprint(data), minutes=0, every_batches=1)
    model = DeepRetrieval(cfg).fit(data, log=lambda _: None, checkpoint=ck, resume=resume)
    from tests.test_resume import fingerprint
    print("FINGERPRINT", fingerprint(model))
""")


def _run(script: Path, *args) -> str:
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return [line for line in out.stdout.splitlines() if line.startswith("FINGERPRINT")][0].split()[1]


def _step(ckpt: Path) -> int:
    """The step of the checkpoint at ``ckpt`` (0 if none yet); it is replaced atomically."""
    if not ckpt.exists():
        return 0
    return json.loads(torch.load(ckpt, weights_only=True)["progress"])["step"]


def test_sigkill_at_several_points_then_resume_equals_uninterrupted(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT.format(root=str(ROOT)))
    want = _run(script, str(tmp_path / "a.ckpt"))  # uninterrupted, one thread
    ckpt = tmp_path / "b.ckpt"
    killed_at = []
    for attempt, target in enumerate((4, 14)):  # kill after step 4, resume, kill after step 14
        args = [sys.executable, str(script), str(ckpt)] + ([str(ckpt)] if attempt else [])
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and _step(ckpt) < target:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at.append(_step(ckpt))
    assert 4 <= killed_at[0] < killed_at[1] < 30  # killed mid-run, twice, at different points
    assert _run(script, str(ckpt), str(ckpt)) == want  # resumed to the end
    # a kill during a write leaves a temporary file; the next run on the target removes it
    assert not list(tmp_path.glob(".b.ckpt.tmp-*"))


def test_stale_checkpoint_temporaries_of_dead_processes_are_removed(tmp_path):
    from deep_retrieval.artifacts import HOST_TAG

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".run.ckpt.tmp-{dead}-{HOST_TAG}0a1b2c3d"
    live = tmp_path / f".run.ckpt.tmp-{os.getpid()}-{HOST_TAG}0a1b2c3d"
    other = tmp_path / f".run.ckpt.tmp-{dead}-ffffffff0a1b2c3d"  # another machine's
    for f in (stale, live, other):
        f.write_bytes(b"half")
    Checkpointer(tmp_path / "run.ckpt", "fp")  # a new run on the target cleans up first
    assert live.exists() and other.exists() and not stale.exists()
