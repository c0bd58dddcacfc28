"""Incremental updates: continue a trained DeepRetrieval on new interactions (SPEC 5, streaming).

    new log (original user / item ids, optional times)
      -> each user's new interactions in time order = one training row (prefix examples)
      -> unseen items get the next dense indices (the id map grows; old indices never move)
      -> TrainState.for_update: old weights, paths and scores; new items: fresh rows, random
         paths, empty score rows
      -> ``epochs`` joint epochs on the new rows, each ending with an M-step: the score table
         decays by eta and takes the new beams' scores, coordinate descent places the new
         items (with the size penalty) and may move the old ones the new data speaks of

An update with no training example changes nothing but the decay of the scores (eta).
A blend (``DeepRetrieval.blend``) is kept while no new item arrives; its item-item scorer
knows only the items it was fitted on, so an update that adds items drops it (logged).
The model is never retrained from scratch; users need nothing (a user is their history).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .data.dataset import Dataset, Ragged, Split
from .errors import DRError
from .examples import Examples
from .mstep import ScoreTable, streaming_update
from .state import TrainState
from .train import train


def extend_catalogue(item_ids: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(grown item_ids, dense index of every entry of ``items``); unseen ids are appended in
    order of first appearance. Ids are compared as strings, as the model's id lookup does."""
    known = {str(x): i for i, x in enumerate(item_ids.tolist())}
    dense = np.empty(len(items), dtype=np.int64)
    added: list = []
    for j, x in enumerate(items.tolist()):
        i = known.get(str(x))
        if i is None:
            i = known[str(x)] = len(item_ids) + len(added)
            added.append(x)
        dense[j] = i
    if not added:
        return item_ids, dense
    extra = np.asarray(added)
    if item_ids.dtype.kind in "iu" and extra.dtype.kind not in "iu":
        raise DRError(f"the model's item ids are integers, the new log has id {added[0]!r}")
    return np.concatenate([item_ids, extra.astype(item_ids.dtype, copy=False)]), dense


def log_dataset(item_ids: np.ndarray, users, items, times=None, history=None) -> tuple[Dataset, np.ndarray]:
    """A training-only Dataset of the new log, one time-ordered row per user, and a mask
    (aligned with ``ds.train.values``) of the new interactions.

    ``history``: (users, items, times or None) of earlier interactions; those of the new
    log's users go first in their rows, as inputs only.
    """
    users, items = np.asarray(users), np.asarray(items)
    if users.shape != items.shape or users.ndim != 1:
        raise DRError(f"users and items must be 1-d and of one length, got {users.shape} and {items.shape}")
    keys = np.zeros(len(users)) if times is None else np.asarray(times, dtype=np.float64)
    if keys.shape != users.shape:
        raise DRError("times must have one entry per interaction")
    new = np.ones(len(users), dtype=bool)
    group = np.ones(len(users))  # history (0) before the new interactions (1) in each row
    if history is not None:
        hu, hi = np.asarray(history[0]), np.asarray(history[1])
        ht = np.zeros(len(hu)) if history[2] is None else np.asarray(history[2], dtype=np.float64)
        mine = np.isin(hu, users)
        n_old = int(mine.sum())
        users, items = np.concatenate([hu[mine], users]), np.concatenate([hi[mine], items])
        keys, group = np.concatenate([ht[mine], keys]), np.concatenate([np.zeros(n_old), group])
        new = np.concatenate([np.zeros(n_old, dtype=bool), new])
    grown, dense = extend_catalogue(np.asarray(item_ids), items)
    uniq, u = np.unique(users, return_inverse=True)
    order = np.lexsort((keys, group, u))  # by user, history first, then time; stable
    lengths = np.bincount(u, minlength=len(uniq)).astype(np.int64)
    empty = Split(np.zeros(0, dtype=np.int64), Ragged.from_lists([]), Ragged.from_lists([]))
    ds = Dataset(
        item_ids=grown, user_ids=uniq, train=Ragged.from_lengths(dense[order], lengths),
        train_users=np.arange(len(uniq), dtype=np.int64), val=empty, test=empty,
        manifest={"kind": "update log", "interactions": int(new.sum())},
    )
    return ds, new[order]


def update(model, users, items, times=None, epochs: int = 1, log=print, history=None):
    """Continue ``model`` (a fitted DeepRetrieval) on a new log, in place; returns it.

    ``history``: (users, items, times or None) of the users' earlier interactions, inputs only.
    """
    model._check_fitted()
    if epochs < 1:
        raise DRError(f"epochs must be >= 1, got {epochs}")
    cfg = model.config
    ds, new = log_dataset(model.item_ids, users, items, times, history)
    V_old = model.n_items
    # the update's schedule: joint epochs on the new rows, one M-step at the end of each
    run = dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, epochs_joint=epochs, epochs_dr=0, max_examples_per_epoch=0),
        em=dataclasses.replace(cfg.em, mstep_every=0),
    )
    ex = Examples(ds, cfg.encoder.max_seq_len, cfg.train.context).only_targets_at(new)
    scores = model.scores if model.scores is not None else ScoreTable.empty(V_old, cfg.em.S)
    n_updates = sum(1 for e in model.log if e.get("phase") == "update")
    seed = cfg.train.seed + 1000 * (n_updates + 1)
    state = TrainState.for_update(run, model.net, model.assignment, scores, ds, ex, seed)
    if len(ex) == 0:  # nothing to learn from: the scores age by one step, nothing else moves
        state.scores = streaming_update(state.scores, ScoreTable.empty(ds.n_items, cfg.em.S), cfg.em.eta)
        entries = [{"phase": "update", "examples": 0, "new_items": ds.n_items - V_old}]
        log(f"update: no training example in {ds.manifest['interactions']:,} interactions: scores decayed")
    else:
        train(state, ds, ex, log=log)
        entries = [{**e, "phase": "update", "new_items": ds.n_items - V_old} for e in state.log]
    model._adopt(state, ds.item_ids)
    model.log = [*model.log, *entries]
    model.config = cfg
    if model.blend_scorer is not None and ds.n_items > V_old:
        log(f"update: {ds.n_items - V_old:,} new items: the blend's {model.blend['scorer']} was fitted on "
            f"the first {V_old:,}: blend dropped, the reranker ranks alone (refit it with "
            "DeepRetrieval.fit_blend on a data set with the new items)")
        model.blend = {**model.blend, "w": 0.0, "dropped_by_update": True}
        model.blend_scorer = None
    return model
