"""Softmax reranker: inner-product scores, sampled softmax with logQ and accidental hits."""

import math

import numpy as np
import pytest
import torch

from deep_retrieval.config import RerankerConfig
from deep_retrieval.errors import DRError
from deep_retrieval.reranker import Reranker

V, E = 12, 4


def make(sampling="unigram", counts=None, negatives=6, seed=0):
    torch.manual_seed(0)
    counts = np.arange(V) if counts is None else counts
    cfg = RerankerConfig(negatives=negatives, sampling=sampling, unigram_power=0.75)
    return Reranker(V, E, cfg, counts, seed=seed).double()


def test_scores_pads_and_full_scores_agree():
    rr = make()
    u = torch.randn(3, E, dtype=torch.double)
    items = torch.tensor([[0, 5, -1], [11, -1, -1], [2, 2, 3]])
    s = rr.score(u, items)
    assert s.shape == (3, 3)
    assert torch.isneginf(s[items < 0]).all()
    full = rr.full_scores(u)
    assert full.shape == (3, V)
    ok = items >= 0
    torch.testing.assert_close(s[ok], full.gather(1, items.clamp(min=0))[ok])
    W = rr.item_embeddings()
    assert W.dtype == np.float32 and W.shape == (V, E)
    np.testing.assert_allclose(u.numpy() @ W.T, full.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_sampling_distribution_and_determinism():
    rr = make()
    q = np.maximum(np.arange(V), 1) ** 0.75  # item 0 counted 0 -> treated as 1
    np.testing.assert_allclose(rr.q.numpy(), q / q.sum())
    assert torch.equal(make(seed=7).sample_negatives(50), make(seed=7).sample_negatives(50))
    draws = make(negatives=1).sample_negatives(20000)
    freq = np.bincount(draws.numpy(), minlength=V) / 20000
    np.testing.assert_allclose(freq, q / q.sum(), atol=0.01)
    uni = make(sampling="uniform")
    np.testing.assert_allclose(uni.q.numpy(), np.full(V, 1 / V))
    assert torch.allclose(Reranker(V, E, RerankerConfig(), None).q, torch.full((V,), 1 / V))


def test_sampled_softmax_equals_direct_computation_with_accidental_hits():
    rr = make()
    u = torch.randn(3, E, dtype=torch.double)
    targets = torch.tensor([1, 4, 9])
    neg = torch.tensor([4, 2, 4, 7, 11])  # 4 is an accidental hit for row 1 (twice)
    W, logq = rr.item_emb.weight, rr.q.log()
    total = 0.0
    for i in range(3):
        t = targets[i]
        pos = u[i] @ W[t] - logq[t]
        others = [u[i] @ W[v] - logq[v] for v in neg.tolist() if v != t]
        total += -(pos - torch.logsumexp(torch.stack([pos, *others]), 0))
    loss = rr.sampled_softmax_loss(u, targets, neg)
    torch.testing.assert_close(loss, total / 3)


def test_default_negatives_are_drawn_and_loss_is_finite():
    rr = make(negatives=8)
    u = torch.randn(5, E, dtype=torch.double, requires_grad=True)
    loss = rr.sampled_softmax_loss(u, torch.tensor([0, 1, 2, 3, 3]))
    assert math.isfinite(loss.item())
    loss.backward()
    assert rr.item_emb.weight.grad.abs().sum() > 0 and u.grad.abs().sum() > 0


# ------------------------------------------------------------ cosine, temperature, full, multi-target
def make_cfg(**kw):
    torch.manual_seed(0)
    return Reranker(V, E, RerankerConfig(negatives=6, **kw), np.arange(V), seed=0).double()


def sim(rr, u, v):
    """The configured similarity of one user row and one item, computed directly."""
    w = rr.item_emb.weight[v]
    if rr.cfg.similarity == "cosine":
        return (u @ w) / (u.norm() * w.norm())
    return u @ w


def test_cosine_scores_are_normalised_inner_products():
    rr = make_cfg(similarity="cosine", temperature=0.1)
    u = torch.randn(3, E, dtype=torch.double) * 5
    full = rr.full_scores(u)
    want = torch.stack([torch.stack([sim(rr, u[i], v) for v in range(V)]) for i in range(3)])
    torch.testing.assert_close(full, want)  # the temperature never enters a score
    W = rr.item_embeddings()
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, rtol=1e-6)
    un = rr.user(u)
    torch.testing.assert_close(un.norm(dim=1), torch.ones(3, dtype=torch.double))
    torch.testing.assert_close(rr.user(un), un)  # idempotent
    # ranking by an inner product over item_embeddings() is the reranker's ranking, raw u or not
    np.testing.assert_array_equal(np.argsort(-(u.numpy() @ W.T), 1), np.argsort(-full.detach().numpy(), 1))
    items = torch.tensor([[0, 5, -1], [11, 3, 2], [2, 2, 7]])
    s = rr.score(u, items)
    torch.testing.assert_close(s[items >= 0], full.gather(1, items.clamp(min=0))[items >= 0])


def test_dot_defaults_leave_the_embeddings_untouched():
    rr = make_cfg()
    u = torch.randn(2, E, dtype=torch.double)
    assert rr.user(u) is u and rr.item_weight() is rr.item_emb.weight


def direct_loss(rr, u, targets, neg=None):
    """Mean over rows of the mean over valid targets of -log softmax, by explicit loops."""
    t, logq = rr.cfg.temperature, rr.q.log()
    rows = []
    for i in range(len(u)):
        per = []
        for y in [y for y in targets[i].tolist() if y >= 0]:
            if neg is None:  # full softmax over all items
                logits = torch.stack([sim(rr, u[i], v) / t for v in range(V)])
                per.append(-(logits[y] - torch.logsumexp(logits, 0)))
            else:
                pos = sim(rr, u[i], y) / t - logq[y]
                others = [sim(rr, u[i], v) / t - logq[v] for v in neg.tolist() if v != y]
                per.append(-(pos - torch.logsumexp(torch.stack([pos, *others]), 0)))
        if per:
            rows.append(torch.stack(per).mean())
    return torch.stack(rows).mean()


TARGETS = torch.tensor([[1, 4, -1], [9, -1, -1], [-1, -1, -1], [4, 2, 7]])  # a row without targets


@pytest.mark.parametrize("similarity,temperature", [("dot", 1.0), ("dot", 0.5), ("cosine", 0.1)])
def test_multi_target_losses_equal_direct_computation(similarity, temperature):
    rr = make_cfg(similarity=similarity, temperature=temperature)
    u = torch.randn(4, E, dtype=torch.double)
    neg = torch.tensor([4, 2, 4, 7, 11])  # 4: accidental hit of rows 0 and 3 (twice); 2 and 7: row 3
    torch.testing.assert_close(rr.sampled_softmax_loss(u, TARGETS, neg), direct_loss(rr, u, TARGETS, neg))
    torch.testing.assert_close(rr.full_softmax_loss(u, TARGETS), direct_loss(rr, u, TARGETS))


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_one_target_per_row_equals_the_single_target_losses(similarity):
    rr = make_cfg(similarity=similarity, temperature=0.3)
    u = torch.randn(5, E, dtype=torch.double)
    y = torch.tensor([1, 4, 9, 4, 0])
    neg = torch.tensor([4, 2, 4, 7, 11, 0])
    one = rr.sampled_softmax_loss(u, y, neg)
    torch.testing.assert_close(rr.sampled_softmax_loss(u, y[:, None], neg), one)
    torch.testing.assert_close(rr.full_softmax_loss(u, y[:, None]), rr.full_softmax_loss(u, y))
    torch.testing.assert_close(rr.full_softmax_loss(u, y), direct_loss(rr, u, y[:, None]))


def test_loss_dispatches_on_the_config_and_full_needs_dense_embeddings():
    u = torch.randn(4, E, dtype=torch.double)
    full = make_cfg(loss="full")
    torch.testing.assert_close(full.loss(u, TARGETS), full.full_softmax_loss(u, TARGETS))
    sampled = make_cfg()
    want = make_cfg().sampled_softmax_loss(u, TARGETS)  # same seed: the same negatives
    torch.testing.assert_close(sampled.loss(u, TARGETS), want)
    with pytest.raises(DRError, match="sparse_embeddings"):
        Reranker(V, E, RerankerConfig(loss="full"), None, sparse=True)


def test_multi_target_loss_gradients_are_finite_with_many_hits():
    rr = make_cfg(similarity="cosine", temperature=0.05)
    u = torch.randn(4, E, dtype=torch.double, requires_grad=True)
    neg = torch.arange(V).repeat(3)  # every target is drawn 3 times
    loss = rr.sampled_softmax_loss(u, TARGETS, neg)
    loss.backward()
    assert torch.isfinite(u.grad).all() and torch.isfinite(rr.item_emb.weight.grad).all()
    torch.testing.assert_close(loss, direct_loss(rr, u, TARGETS, neg))
