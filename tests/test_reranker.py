"""Softmax reranker: inner-product scores, sampled softmax with logQ and accidental hits."""

import math

import numpy as np
import torch

from deep_retrieval.config import RerankerConfig
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
