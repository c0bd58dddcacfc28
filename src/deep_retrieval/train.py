"""The EM loop (SPEC 5) and the paper's schedule, run on one ``TrainState``.

    pi <- random J distinct paths per item                       (TrainState.new)
    for epoch in 1 .. epochs_joint + epochs_dr:
        E-step: minibatches of (history, target); loss = -Q_str (multi-path) [+ -Q_softmax]
                phase 1 (epochs_joint): structure model and softmax reranker together
                phase 2 (epochs_dr):    the softmax model frozen (DRNet.softmax_params)
        M-step: once per epoch, or every em.mstep_every batches (counted across epochs; no
                M-step for the batches after the last multiple), over the distinct examples
                trained on since the previous M-step
                beam search of width S per training example (no grad) -> s'[v, c]
                s <- streaming_update(s, s', eta)
                pi <- penalised coordinate descent (Algorithm 2)
        log: Q_str, Q_softmax, penalty, path statistics, candidates per user, val recall
        early stopping (train.patience): the joint phase ends after `patience` epochs without a
                better val recall; train.restore_best rolls net, pi and s back to the best one

``train`` picks up wherever the state is (a new run, a checkpoint, a trained model being
updated) and leaves it at the end of the schedule; a ``Checkpointer`` may write it after
any batch.

Data parallel (``torchrun --nproc_per_node N``, the process group initialised by the caller,
e.g. `dr train`): every rank draws the same permutation and trains on its slice of each
epoch, gradients are averaged with one all-reduce per step, and each M-step gathers the
ranks' (target, path, probability) triples so that every rank runs the same streaming update
and coordinate descent and so holds the same assignment.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .beam import beam_search
from .data.dataset import Dataset, unique_sorted
from .errors import DRError
from .examples import Examples
from .metrics import compute
from .mstep import (
    ScoreTable,
    collect_scores,
    coordinate_descent,
    merge_sum,
    penalised_objective,
    streaming_update,
)
from .paths import PathIndex, path_stats
from .retrieval import recommend
from .state import Checkpointer, Progress, TrainState, _rank_world, make_optimizers
from .structure import from_flat, to_flat

__all__ = ["Examples", "make_optimizers", "train", "m_step", "window_examples", "SCORE_BATCH"]

SCORE_BATCH = 512  # examples per no-grad beam-search batch in score collection (CPU)
SCORE_BATCH_GPU = 8192  # the same on a GPU, where a (8192, S * K) layer is still small
MAX_ENTRIES = 1 << 27  # (example, path) entries summed at once in score collection (~40 bytes each)


def train(
    state: TrainState, ds: Dataset, ex: Examples | None = None, log=print,
    checkpoint: Checkpointer | None = None,
) -> TrainState:
    """Run the schedule from wherever ``state`` is to its end; returns ``state``."""
    cfg = state.config
    S, E, T = cfg.structure, cfg.em, cfg.train
    ex = ex or Examples(ds, cfg.encoder.max_seq_len, T.context)
    net, P = state.net, state.progress
    if _rank_world()[1] > 1 and dist.get_backend() == "nccl" and any(
        isinstance(m, torch.nn.Embedding) and m.sparse for m in net.modules()
    ):
        raise DRError("data parallel on GPUs (NCCL) needs dense embedding gradients: "
                      "set train.sparse_embeddings = \"no\"")
    frozen = {id(p) for p in net.softmax_params()}
    n_epochs = T.epochs_joint + T.epochs_dr
    while P.epoch < n_epochs:
        joint = P.epoch < T.epochs_joint
        for p in net.parameters():
            p.requires_grad_(joint or id(p) not in frozen)
        if state.order is None:  # a new epoch
            order = state.rng.permutation(len(ex))
            state.order = order[: T.max_examples_per_epoch] if T.max_examples_per_epoch else order
            state.progress = P = Progress(epoch=P.epoch, step=P.step)
        rank, world = _rank_world()
        order = state.order
        mine = order[rank : len(order) - len(order) % world : world]  # this rank's equal share
        batches = np.array_split(mine, max(1, -(-len(mine) // T.batch_size)))

        t0 = time.perf_counter() - P.seconds
        desc = f"epoch {P.epoch + 1}/{n_epochs} ({'joint' if joint else 'DR only'})"
        bar = tqdm(batches[P.batch :], desc=desc, disable=not T.progress, leave=False, mininterval=1.0,
                   initial=P.batch, total=len(batches))
        for idx in bar:
            P.step += 1
            _e_step(state, ex, idx, joint)
            state.window.append(idx)
            if P.step % 50 == 0:
                bar.set_postfix(Q_str=f"{-P.loss_str / P.examples:.3f}")
            if E.mstep_every and P.step % E.mstep_every == 0:
                _timed_m_step(state, ex)
            P.batch += 1
            P.seconds = time.perf_counter() - t0
            if checkpoint is not None:
                checkpoint.maybe(state)
        if not E.mstep_every:  # the paper: one M-step per epoch
            _timed_m_step(state, ex)
        P.seconds = time.perf_counter() - t0

        entry = {
            "epoch": P.epoch + 1,
            "phase": "joint" if joint else "dr",
            "Q_str": -P.loss_str / max(P.examples, 1),
            "Q_softmax": (-P.loss_sm / max(P.examples, 1)) if joint else None,
            "examples": P.examples,
            "seconds_e_step": P.seconds - P.seconds_m,
            "seconds_m_step": P.seconds_m,
            **P.mstep_info,
            "paths": path_stats(state.assignment, S.K**S.D),
        }
        entry.update(_validate(state, ds, T.val_k))
        state.log.append(entry)
        if rank == 0:
            log(_epoch_line(entry))
        P.epoch += 1
        state.order = None
        if joint and T.patience:
            key = f"val_recall@{T.val_k}"
            if T.restore_best and _improved(state.log, key):
                _keep(state)
            if _stalled(state.log, key, T.patience):
                if rank == 0:
                    log(f"validation recall@{T.val_k} has not improved for {T.patience} epochs: "
                        "the joint phase ends")
                P.epoch = max(P.epoch, T.epochs_joint)
            if P.epoch >= T.epochs_joint and state.best is not None:
                _restore_best(state, key, log if rank == 0 else lambda _: None)
    net.eval()
    return state


def _keep(state: TrainState) -> None:
    """Copy the network, paths and scores of the epoch just finished to the CPU."""
    state.best = {
        "epoch": state.progress.epoch,  # 1-based: the loop has counted it
        "net": {k: v.detach().to("cpu", copy=True) for k, v in state.net.state_dict().items()},
        "assignment": state.assignment.copy(),
        "scores": ScoreTable(state.scores.paths.copy(), state.scores.scores.copy()),
    }


def _restore_best(state: TrainState, key: str, log) -> None:
    """End of the joint phase: roll back to the best joint epoch (a no-op when it was the last)."""
    best, state.best = state.best, None
    last = state.log[-1]
    if best["epoch"] == last["epoch"]:
        return
    state.net.load_state_dict(best["net"])  # copies onto the parameters' own device
    state.assignment, state.scores = best["assignment"], best["scores"]
    last["restored_epoch"] = best["epoch"]
    value = next(e[key] for e in state.log if e["epoch"] == best["epoch"])
    log(f"restored epoch {best['epoch']}'s network, paths and scores "
        f"(validation recall@{state.config.train.val_k} {value:.4f})")


def _e_step(state: TrainState, ex: Examples, idx: np.ndarray, joint: bool) -> None:
    """One gradient step on the batch ``idx`` of examples."""
    net, S, P, dev = state.net, state.config.structure, state.progress, state.device
    net.train()
    hist, lengths, y = (t.to(dev) for t in ex.batch(idx))  # y: (b,) one target each, or (b, T) padded -1
    m = 0 if joint else state.config.train.distill
    if m:
        y = torch.cat([y.view(len(idx), -1), distill_targets(net, hist, lengths, y, m)], dim=1)  # (b, T + m)
    pi = torch.from_numpy(state.assignment[y.cpu().numpy().clip(min=0)]).to(dev)  # (b, J) or (b, T, J)
    paths = from_flat(pi, S.K, S.D)  # (b, J, D) or (b, T, J, D)

    def structure_loss(u_str):  # () = -Q_str / batch
        if y.dim() == 1:
            return net.structure.multipath_loss(u_str, paths)
        return net.structure.multipath_loss_multi(u_str, paths, y >= 0)

    if joint:
        u_str, u_rr = net.encode(hist, lengths)  # (batch, e) each
        loss_str = structure_loss(u_str)
        loss_sm = net.reranker.loss(u_rr, y)  # () = -Q_softmax / batch
        loss = loss_str + loss_sm
        P.loss_sm += loss_sm.item() * len(idx)
    else:  # phase 2: the softmax model is frozen and not even evaluated
        u_str = net.enc_str(hist, lengths)  # (batch, e)
        loss = loss_str = structure_loss(u_str)
    for opt in state.opts:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    _average_gradients(net)
    for opt in state.opts:
        opt.step()
    P.loss_str += loss_str.item() * len(idx)
    P.examples += len(idx)


@torch.no_grad()
def distill_targets(net, hist: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor, m: int) -> torch.Tensor:
    """The reranker's top ``m`` items for each example by brute force (dropout off), the
    example's history and targets left out: (b, m) long, padded -1 where fewer remain."""
    was_training = net.training
    s = net.eval().reranker.full_scores(net.encode_rr(hist, lengths))  # (b, V)
    net.train(was_training)
    V = s.shape[1]
    s = torch.nn.functional.pad(s, (0, 1))  # (b, V + 1): column V takes the -1 pads
    for seen in (hist, y.view(len(s), -1)):
        s.scatter_(1, torch.where(seen < 0, V, seen), float("-inf"))
    top, items = s[:, :V].topk(min(m, V), dim=1)  # (b, m)
    return items.masked_fill(top == float("-inf"), -1)


def _timed_m_step(state: TrainState, ex: Examples) -> None:
    tm = time.perf_counter()
    joint = state.progress.epoch < state.config.train.epochs_joint
    state.progress.mstep_info = m_step(state, ex, *window_examples(ex, state.window, state.n_items),
                                       distill=0 if joint else state.config.train.distill)
    state.progress.seconds_m += time.perf_counter() - tm
    state.window = []


def window_examples(ex: Examples, window: list[np.ndarray], V: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct examples trained on since the last M-step, and N_v (V,) over them.

    An M-step spanning several epochs scores each example once (with the current model).
    """
    idx = unique_sorted(np.concatenate(window)) if window else np.zeros(0, dtype=np.int64)  # (n,)
    return idx, np.bincount(ex.pairs(idx)[1], minlength=V)


@torch.no_grad()
def m_step(state: TrainState, ex: Examples, idx: np.ndarray, N_v: np.ndarray, distill: int = 0) -> dict:
    """Score collection over the window's examples, streaming update, coordinate descent.

    ``distill`` > 0: each example's beam also scores the reranker's top ``distill`` items
    (``distill_targets``); N_v stays the training pairs' counts. The (example, path) entries
    are summed exactly up to ``MAX_ENTRIES`` at a time (one process), in chunk tables merged
    by ``merge_sum`` beyond that.
    """
    cfg = state.config
    S, E = cfg.structure, cfg.em
    net = state.net
    net.eval()
    V = len(N_v)
    world = _rank_world()[1]
    t0 = time.perf_counter()
    tables = net.structure.prefix_tables()
    width = min(E.S, S.K**S.D)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (targets, flat paths, probs)
    pending = 0  # (example, path) entries in ``parts``
    new = None

    def flush(acc):  # sum the parts into one table, added to ``acc`` (None: the first)
        if not parts:  # an empty window: an empty table
            parts.append((np.zeros(0, dtype=np.int64), np.zeros((0, width), dtype=np.int64),
                          np.zeros((0, width), dtype=np.float32)))
        targets, flat, probs = (np.concatenate(x) for x in zip(*parts, strict=True))
        parts.clear()
        if world > 1:  # every rank gets every rank's triples
            gathered = [None] * world
            dist.all_gather_object(gathered, (targets, flat, probs))
            targets, flat, probs = (np.concatenate(x) for x in zip(*gathered, strict=True))
        table = collect_scores(targets, flat, probs, V, E.S)
        return table if acc is None else merge_sum(acc, table, E.S)

    step = SCORE_BATCH if state.device.type == "cpu" else SCORE_BATCH_GPU
    for lo in range(0, len(idx), step):
        b = idx[lo : lo + step]
        hist, lengths, y = (t.to(state.device) for t in ex.batch(b))
        u_str = net.enc_str(hist, lengths)  # (b, e)
        paths, logp = beam_search(net.structure, u_str, E.S, tables)  # (b, S', D), (b, S')
        rows, items = ex.pairs(b)  # each example's beam scores each of its targets
        if distill:
            top = distill_targets(net, hist, lengths, y, distill).cpu().numpy()  # (b, m)
            r, j = np.nonzero(top >= 0)
            rows, items = np.concatenate([rows, r]), np.concatenate([items, top[r, j]])
        parts.append((items, to_flat(paths, S.K).cpu().numpy()[rows], logp.exp().float().cpu().numpy()[rows]))
        pending += len(items) * width
        if world == 1 and pending > MAX_ENTRIES:
            new, pending = flush(new), 0
    if parts or new is None:
        new = flush(new)
    if world > 1:  # N_v over every rank's examples
        counts = [None] * world
        dist.all_gather_object(counts, N_v)
        N_v = np.sum(counts, axis=0)
    t1 = time.perf_counter()
    state.scores = streaming_update(state.scores, new, E.eta)
    rng = np.random.default_rng(cfg.train.seed + len(state.log) + 1)
    pi = coordinate_descent(
        state.scores, N_v, state.assignment, S.J, E.alpha, E.penalty_power, E.T, rng,
        n_paths=S.K**S.D, explore=E.explore,
    )
    t2 = time.perf_counter()
    state.assignment = np.ascontiguousarray(pi, dtype=np.int64)
    obj = penalised_objective(state.scores, N_v, pi, E.alpha, E.penalty_power)
    return {
        "seconds_score_collection": t1 - t0,
        "seconds_coordinate_descent": t2 - t1,
        "penalised_objective": float(obj),
        "penalty": float(E.alpha * _penalty(pi, E.penalty_power)),
    }


def _average_gradients(net: torch.nn.Module) -> None:
    """Data parallel: average every gradient over the ranks (a no-op on one process)."""
    world = _rank_world()[1]
    if world == 1:
        return
    for p in net.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def _penalty(pi: np.ndarray, p: float) -> float:
    """sum_c f(|c|) with f(x) = x^p / p over the assignment's exact path sizes."""
    _, sizes = np.unique(pi, return_counts=True)
    return float(np.sum(sizes.astype(np.float64) ** p / p))


def _improved(log: list[dict], key: str) -> bool:
    """True when the last joint epoch logged ``key`` above every joint epoch before it."""
    if key not in log[-1]:
        return False
    vals = [e[key] for e in log if e.get("phase") == "joint" and key in e]
    return vals[-1] > max(vals[:-1], default=-1.0)


def _stalled(log: list[dict], key: str, patience: int) -> bool:
    """True when the last ``patience`` joint epochs all logged ``key`` below the best before them."""
    vals = [e[key] for e in log if e.get("phase") == "joint" and key in e]
    return len(vals) > patience and max(vals[-patience:]) <= max(vals[:-patience])


def _validate(state: TrainState, ds: Dataset, k: int = 10) -> dict:
    """Recall@k of DR (at train.val_B, else beam.B) on the validation users, and its candidates
    per user."""
    split = ds.val  # never the test users: the log is what configs are chosen on
    if len(split) == 0:
        return {}
    cfg = state.config
    ids, _, scored = recommend(state.net, PathIndex(state.assignment), cfg, split.hist, k,
                              cfg.train.val_B or cfg.beam.B)
    m = compute(ids, split.truth, [k])[k]
    return {f"val_recall@{k}": m["recall"], "candidates_per_user": float(scored.mean())}


def _epoch_line(e: dict) -> str:
    p = e["paths"]
    sm = f" Q_softmax {e['Q_softmax']:.3f}" if e["Q_softmax"] is not None else ""
    val = "".join(f" {k} {v:.4f}" for k, v in e.items() if k.startswith("val_"))
    return (
        f"epoch {e['epoch']} [{e['phase']}] Q_str {e['Q_str']:.3f}{sm} penalty {e.get('penalty', 0):.3g}"
        f" | paths non-empty {p['non_empty']} largest {p['largest']} mean {p['mean']:.1f}"
        f" | candidates/user {e.get('candidates_per_user', float('nan')):.0f}{val}"
        f" | E {e['seconds_e_step']:.1f}s M {e['seconds_m_step']:.1f}s"
    )
