"""The EM loop (SPEC 5) and the paper's schedule.

    pi <- random J distinct paths per item
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

Everything an epoch logs goes into ``model.log`` (saved with the model).

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
from .data.dataset import Dataset, pad_histories, pad_others, unique_sorted
from .errors import DRError
from .metrics import compute
from .model import DeepRetrieval, DRNet
from .mstep import ScoreTable, collect_scores, coordinate_descent, penalised_objective, streaming_update
from .paths import path_stats, random_assignment
from .structure import from_flat, to_flat

SCORE_BATCH = 512  # examples per no-grad beam-search batch in score collection


class Examples:
    """The training pairs of a Dataset: target = an item, input = its context.

    ``context = "prefix"``: every item but the first of a row, input = the items before it.
    ``context = "others"``: every item of a row of length >= 2, input = the row's other items.
    """

    def __init__(self, ds: Dataset, max_len: int, context: str = "prefix"):
        tr = ds.train
        self.values, self.max_len, self.context = tr.values, max_len, context
        if context == "prefix":
            self.pos = ds.example_positions()  # (N,) positions of targets in train.values
        else:
            self.pos = np.flatnonzero(np.repeat(tr.lengths >= 2, tr.lengths))  # (N,)
        rows = np.searchsorted(tr.offsets, self.pos, side="right") - 1  # (N,)
        self.starts, self.ends = tr.offsets[rows], tr.offsets[rows + 1]  # (N,) each target's row
        self.targets = self.values[self.pos]  # (N,)

    def __len__(self) -> int:
        return len(self.pos)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch, L) histories padded -1, (batch,) lengths, (batch,) targets."""
        if self.context == "prefix":
            hist, lengths = pad_histories(self.values, self.starts[idx], self.pos[idx], self.max_len)
        else:
            hist, lengths = pad_others(self.values, self.starts[idx], self.ends[idx], self.pos[idx],
                                       self.max_len)
        return torch.from_numpy(hist), torch.from_numpy(lengths), torch.from_numpy(self.targets[idx])


def fit(model: DeepRetrieval, ds: Dataset, log=print) -> DeepRetrieval:
    cfg = model.config
    S, E, T = cfg.structure, cfg.em, cfg.train
    if T.threads:
        torch.set_num_threads(T.threads)
    torch.manual_seed(T.seed)
    rng = np.random.default_rng(T.seed)
    V, n_paths = ds.n_items, S.K**S.D
    ex = Examples(ds, cfg.encoder.max_seq_len, T.context)
    if len(ex) == 0:
        raise DRError("the data set has no training examples (every training row is shorter than 2)")
    counts = np.bincount(ex.targets, minlength=V)  # (V,) N_v over all training pairs

    net = DRNet(V, cfg, item_counts=counts)
    model.net = net
    model.item_ids = ds.item_ids
    model.set_assignment(random_assignment(V, S.J, n_paths, rng))  # (V, J)
    model.scores = ScoreTable.empty(V, E.S)
    model.log = []
    opts = make_optimizers(net, T.lr, T.weight_decay)
    frozen = {id(p) for p in net.softmax_params()}

    n_epochs = T.epochs_joint + T.epochs_dr
    window: list[np.ndarray] = []  # example batches since the last M-step
    step = 0  # batches since the start of training
    for epoch in range(n_epochs):
        joint = epoch < T.epochs_joint
        for p in net.parameters():
            p.requires_grad_(joint or id(p) not in frozen)
        order = rng.permutation(len(ex))
        if T.max_examples_per_epoch:
            order = order[: T.max_examples_per_epoch]
        rank, world = _rank_world()
        order = order[rank : len(order) - len(order) % world : world]  # this rank's equal share
        batches = np.array_split(order, max(1, -(-len(order) // T.batch_size)))

        t0 = time.perf_counter()
        t_m, sums = 0.0, {"str": 0.0, "sm": 0.0, "n": 0}
        mstep_info: dict = {}
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{n_epochs} ({'joint' if joint else 'DR only'})",
                   disable=not T.progress, leave=False, mininterval=1.0)
        for idx in bar:
            step += 1
            net.train()
            hist, lengths, y = ex.batch(idx)
            paths = from_flat(torch.from_numpy(model.assignment[ex.targets[idx]]), S.K, S.D)  # (b, J, D)
            if joint:
                u_str, u_rr = net.encode(hist, lengths)  # (batch, e) each
                loss_str = net.structure.multipath_loss(u_str, paths)  # () = -Q_str / batch
                loss_sm = net.reranker.sampled_softmax_loss(u_rr, y)  # () = -Q_softmax / batch
                loss = loss_str + loss_sm
                sums["sm"] += loss_sm.item() * len(idx)
            else:  # phase 2: the softmax model is frozen and not even evaluated
                u_str = net.enc_str(hist, lengths)  # (batch, e)
                loss = loss_str = net.structure.multipath_loss(u_str, paths)
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            _average_gradients(net)
            for opt in opts:
                opt.step()
            model.invalidate()
            sums["str"] += loss_str.item() * len(idx)
            sums["n"] += len(idx)
            window.append(idx)
            if step % 50 == 0:
                bar.set_postfix(Q_str=f"{-sums['str'] / sums['n']:.3f}")
            if E.mstep_every and step % E.mstep_every == 0:
                tm = time.perf_counter()
                mstep_info = m_step(model, ex, *window_examples(ex, window, V))
                t_m += time.perf_counter() - tm
                window = []
        if not E.mstep_every:  # the paper: one M-step per epoch
            tm = time.perf_counter()
            mstep_info = m_step(model, ex, *window_examples(ex, window, V))
            t_m += time.perf_counter() - tm
            window = []
        t_epoch = time.perf_counter() - t0

        entry = {
            "epoch": epoch + 1,
            "phase": "joint" if joint else "dr",
            "Q_str": -sums["str"] / max(sums["n"], 1),
            "Q_softmax": (-sums["sm"] / max(sums["n"], 1)) if joint else None,
            "examples": sums["n"],
            "seconds_e_step": t_epoch - t_m,
            "seconds_m_step": t_m,
            **mstep_info,
            "paths": path_stats(model.assignment, n_paths),
        }
        entry.update(_validate(model, ds))
        model.log.append(entry)
        if _rank_world()[0] == 0:
            log(_epoch_line(entry))
    net.eval()
    return model


def make_optimizers(net: torch.nn.Module, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
    """SparseAdam for the item-embedding tables (sparse gradients), Adam for everything else.

    A step then costs the same at V = 10^4 and 10^7: SparseAdam updates only the rows a
    batch touched (lazy Adam). ``weight_decay`` applies to the dense parameters only.
    """
    sparse = [m.weight for m in net.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
    ids = {id(p) for p in sparse}
    dense = [p for p in net.parameters() if id(p) not in ids]
    # fused: one kernel over all the tensors (7.1 -> 0.7 ms a step for ml-1m's ~0.9M weights)
    opts: list[torch.optim.Optimizer] = [
        torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay, fused=True)
    ]
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=lr))
    return opts


def window_examples(ex: Examples, window: list[np.ndarray], V: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct examples trained on since the last M-step, and N_v (V,) over them.

    An M-step spanning several epochs scores each example once (with the current model).
    """
    idx = unique_sorted(np.concatenate(window))  # (n,)
    return idx, np.bincount(ex.targets[idx], minlength=V)


@torch.no_grad()
def m_step(model: DeepRetrieval, ex: Examples, idx: np.ndarray, N_v: np.ndarray) -> dict:
    """Score collection over the window's examples, streaming update, coordinate descent."""
    cfg = model.config
    S, E = cfg.structure, cfg.em
    net = model.net
    net.eval()
    V = len(N_v)
    t0 = time.perf_counter()
    tables = net.structure.prefix_tables()
    flat_parts, prob_parts = [], []
    for lo in range(0, len(idx), SCORE_BATCH):
        b = idx[lo : lo + SCORE_BATCH]
        hist, lengths, _ = ex.batch(b)
        u_str = net.enc_str(hist, lengths)  # (b, e)
        paths, logp = beam_search(net.structure, u_str, E.S, tables)  # (b, S', D), (b, S')
        flat_parts.append(to_flat(paths, S.K).numpy())
        prob_parts.append(logp.exp().numpy())
    targets, flat, probs = ex.targets[idx], np.concatenate(flat_parts), np.concatenate(prob_parts)
    if _rank_world()[1] > 1:  # every rank gets every rank's triples, and N_v over all of them
        parts = [None] * _rank_world()[1]
        dist.all_gather_object(parts, (targets, flat, probs))
        targets, flat, probs = (np.concatenate(x) for x in zip(*parts, strict=True))
        N_v = np.bincount(targets, minlength=V)
    new = collect_scores(targets, flat, probs, V, E.S)
    t1 = time.perf_counter()
    model.scores = streaming_update(model.scores, new, E.eta)
    rng = np.random.default_rng(cfg.train.seed + len(model.log) + 1)
    pi = coordinate_descent(
        model.scores, N_v, model.assignment, S.J, E.alpha, E.penalty_power, E.T, rng,
        n_paths=S.K**S.D, explore=E.explore,
    )
    t2 = time.perf_counter()
    model.set_assignment(pi)
    obj = penalised_objective(model.scores, N_v, pi, E.alpha, E.penalty_power)
    return {
        "seconds_score_collection": t1 - t0,
        "seconds_coordinate_descent": t2 - t1,
        "penalised_objective": float(obj),
        "penalty": float(E.alpha * _penalty(pi, E.penalty_power)),
    }


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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


def _validate(model: DeepRetrieval, ds: Dataset, k: int = 10) -> dict:
    """Recall@k of DR on the validation users, and its candidates per user."""
    split = ds.val  # never the test users: the log is what configs are chosen on
    if len(split) == 0:
        return {}
    users = split.hist
    ids, _ = model.recommend(users, k)
    m = compute(ids, split.truth, [k])[k]
    return {f"val_recall@{k}": m["recall"], "candidates_per_user": float(model.last_items_scored.mean())}


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
