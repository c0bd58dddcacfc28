"""Beam search (Algorithm 1): exhaustive for wide beams, cumulative scores, greedy at B=1."""

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deep_retrieval.beam import beam_search
from deep_retrieval.config import StructureConfig
from deep_retrieval.structure import StructureModel


def make(K, D, e=4, hidden=(6,), seed=0):
    torch.manual_seed(seed)
    m = StructureModel(StructureConfig(K=K, D=D, J=1, hidden=hidden), e).double()
    with torch.no_grad():  # sharper distributions than the default init
        for p in m.parameters():
            p.mul_(3.0)
    return m


def all_paths(K, D):
    return torch.tensor(list(itertools.product(range(K), repeat=D)), dtype=torch.long)


@settings(max_examples=40, deadline=None)
@given(
    K=st.integers(2, 5),
    D=st.integers(1, 3),
    extra=st.integers(0, 30),
    n=st.integers(1, 3),
    seed=st.integers(0, 10**6),
)
def test_wide_beam_equals_exhaustive_top_B(K, D, extra, n, seed):
    B = K ** (D - 1) + extra  # wide enough that beam search is exact
    m = make(K, D, seed=seed)
    u = torch.randn(n, 4, dtype=torch.double, generator=torch.Generator().manual_seed(seed))
    paths, logp = beam_search(m, u, B)
    Bp = min(B, K**D)
    assert paths.shape == (n, Bp, D) and logp.shape == (n, Bp) and paths.dtype == torch.long
    every = all_paths(K, D).unsqueeze(0).expand(n, -1, -1)  # (n, K^D, D)
    best = m.path_logprob(u, every).topk(Bp, dim=1).values  # (n, B')
    torch.testing.assert_close(logp, best)  # the same scores (robust to ties)
    torch.testing.assert_close(m.path_logprob(u, paths), logp)  # returned logp are the paths'
    assert (logp[:, 1:] <= logp[:, :-1]).all()  # sorted descending
    flat = paths[..., 0] * 0
    for d in range(D):
        flat = flat * K + paths[..., d]
    assert all(len(set(row.tolist())) == Bp for row in flat)  # distinct paths


@settings(max_examples=20, deadline=None)
@given(K=st.integers(2, 5), D=st.integers(1, 3), B=st.integers(1, 12), seed=st.integers(0, 999))
def test_any_beam_returns_true_sorted_logprobs(K, D, B, seed):
    m = make(K, D, seed=seed)
    u = torch.randn(2, 4, dtype=torch.double)
    paths, logp = beam_search(m, u, B)
    assert paths.shape == (2, min(B, K**D), D)
    assert ((paths >= 0) & (paths < K)).all()
    torch.testing.assert_close(m.path_logprob(u, paths), logp)
    assert (logp[:, 1:] <= logp[:, :-1]).all()


def test_greedy_is_the_argmax_chain():
    K, D = 5, 3
    m = make(K, D, seed=3)
    u = torch.randn(4, 4, dtype=torch.double)
    paths, logp = beam_search(m, u, 1)
    prefix = torch.zeros(4, 0, dtype=torch.long)
    total = torch.zeros(4, dtype=torch.double)
    for _ in range(D):
        lp = m.layer_logprobs(u, prefix)  # (4, K)
        c = lp.argmax(1)
        total += lp.gather(1, c[:, None]).squeeze(1)
        prefix = torch.cat([prefix, c[:, None]], 1)
    assert torch.equal(paths[:, 0], prefix)
    torch.testing.assert_close(logp[:, 0], total)


def test_beam_ranks_by_cumulative_probability_not_the_last_layer():
    # K = 2, D = 2, e = 1, no hidden layer: layer 0 logits are fixed by its bias,
    # layer 1 reads node_emb[0](c_0) so its distribution depends on the prefix.
    m = StructureModel(StructureConfig(K=2, D=2, J=1, hidden=()), 1).double()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.first[0].bias.copy_(torch.tensor([2.0, 0.0]))  # p(c0=0) ~ 0.88, p(c0=1) ~ 0.12
        m.node_emb[0].weight.copy_(torch.tensor([[0.0], [1.0]]))
        m.first[1].weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 8.0]]))  # c0=1 -> c1=1 w.p. ~1
    u = torch.zeros(1, 1, dtype=torch.double)
    # after c0 = 1 the last layer is almost certain (p ~ 0.9997 for c1 = 1), after c0 = 0
    # it is a coin flip: ranking by the last layer alone would put (1, 1) first, the
    # product of probabilities puts both (0, x) first: 0.88 * 0.5 > 0.12 * 0.9997.
    paths2, logp2 = beam_search(m, u, 2)
    assert paths2[0, 0, 0] == 0 and paths2[0, 1, 0] == 0
    assert torch.equal(paths2[0, :, 1].sort().values, torch.tensor([0, 1]))
    paths4, logp4 = beam_search(m, u, 4)
    assert paths4[0, 2].tolist() == [1, 1] and paths4[0, 3].tolist() == [1, 0]


def test_precomputed_tables_and_no_grad():
    m = make(4, 3, seed=1)
    u = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    with torch.no_grad():
        tables = m.prefix_tables()
    p1, l1 = beam_search(m, u, 7)
    p2, l2 = beam_search(m, u, 7, tables)
    assert torch.equal(p1, p2) and torch.equal(l1, l2)
    assert not l1.requires_grad


def test_rejects_empty_beam():
    m = make(3, 2)
    try:
        beam_search(m, torch.zeros(1, 4, dtype=torch.double), 0)
    except ValueError:
        return
    raise AssertionError("B = 0 accepted")


def test_float32_beam_wider_than_K_and_empty_batch():
    torch.manual_seed(0)
    m = StructureModel(StructureConfig(K=20, D=3, J=1, hidden=(32,)), 8)
    u = torch.randn(5, 8)
    paths, logp = beam_search(m, u, 30)  # B > K: layer 0 keeps K, later layers keep B
    assert paths.shape == (5, 30, 3) and logp.dtype == torch.float32
    torch.testing.assert_close(m.path_logprob(u, paths), logp, rtol=1e-5, atol=1e-5)
    p0, l0 = beam_search(m, torch.zeros(0, 8), 30)
    assert p0.shape == (0, 30, 3) and l0.shape == (0, 30)
