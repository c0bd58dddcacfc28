"""Data-parallel training: two gloo processes end with the same weights and assignment."""

import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deep_retrieval.model import DeepRetrieval
from tests.test_contract import synthetic_dataset
from tests.test_model import tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, blend: str = "") -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = tiny_config()
        cfg.blend.scorer = blend
        model = DeepRetrieval(cfg.validate()).fit(synthetic_dataset(seed=3), log=lambda _: None)
        model.save(f"{out}/rank{rank}")
        dist.barrier()  # no rank tears gloo down while another still talks to it (it aborts then)
    finally:
        dist.destroy_process_group()


def test_two_ranks_agree(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = DeepRetrieval.load(tmp_path / "rank0"), DeepRetrieval.load(tmp_path / "rank1")
    np.testing.assert_array_equal(a.assignment, b.assignment)
    for (k, x), (_, y) in zip(a.net.state_dict().items(), b.net.state_dict().items(), strict=True):
        assert torch.equal(x, y), k
    # each rank trained on half of every epoch's examples
    n = len(synthetic_dataset(seed=3).example_positions())
    assert a.log[0]["examples"] == n // 2
    # while one process sees every example
    single = DeepRetrieval(tiny_config()).fit(synthetic_dataset(seed=3), log=lambda _: None)
    assert single.log[0]["examples"] == n


def test_only_rank_0_fits_the_blend(tmp_path):
    """The blend is fitted after training by the rank that saves the model, not by every rank."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), "rp3beta"), nprocs=2, join=True)
    a, b = DeepRetrieval.load(tmp_path / "rank0"), DeepRetrieval.load(tmp_path / "rank1")
    assert a.blend is not None and a.blend["scorer"] == "rp3beta" and b.blend is None
    np.testing.assert_array_equal(a.assignment, b.assignment)


def _resume_worker(rank: int, world: int, port: int, out: str, mode: str) -> None:
    from deep_retrieval.state import Checkpointer, data_fingerprint
    from tests.test_resume import Stop, StopAt

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        data = synthetic_dataset(seed=3)
        ckpt, fp = f"{out}/run.ckpt", data_fingerprint(data)
        cfg = tiny_config(em__mstep_every=3)
        if mode == "stop":
            try:
                DeepRetrieval(cfg).fit(data, log=lambda _: None, checkpoint=StopAt(ckpt, fp, 4))
            except Stop:
                dist.barrier()
                return
        model = DeepRetrieval(cfg).fit(data, log=lambda _: None, checkpoint=Checkpointer(ckpt, fp, minutes=0),
                                       resume=ckpt if mode == "resume" else None)
        model.save(f"{out}/{mode}{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_resume_from_rank_zeros_checkpoint(tmp_path):
    """Rank 0 writes the checkpoint (with every rank's M-step window); both ranks resume from it."""
    for mode in ("stop", "resume", "full"):
        mp.spawn(_resume_worker, args=(2, _free_port(), str(tmp_path), mode), nprocs=2, join=True)
    full = DeepRetrieval.load(tmp_path / "full0")
    for r in (0, 1):
        resumed = DeepRetrieval.load(tmp_path / f"resume{r}")
        np.testing.assert_array_equal(resumed.assignment, full.assignment)
        pairs = zip(resumed.net.state_dict().items(), full.net.state_dict().items(), strict=True)
        for (k, x), (_, y) in pairs:
            assert torch.equal(x, y), k
