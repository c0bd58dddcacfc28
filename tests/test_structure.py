"""The structure model: per-layer softmaxes, path log-probabilities, the multi-path loss."""

import itertools

import numpy as np
import torch

from deep_retrieval.config import EncoderConfig, RerankerConfig, StructureConfig
from deep_retrieval.encoder import UserEncoder
from deep_retrieval.reranker import Reranker
from deep_retrieval.structure import StructureModel, from_flat, to_flat


def make(K=4, D=3, e=5, hidden=(7,), seed=0):
    torch.manual_seed(seed)
    return StructureModel(StructureConfig(K=K, D=D, J=2, hidden=hidden), e).double()


def all_paths(K, D):
    return torch.tensor(list(itertools.product(range(K), repeat=D)), dtype=torch.long)  # (K^D, D)


def test_flat_ids_round_trip_torch_and_numpy():
    K, D = 5, 3
    paths = all_paths(K, D)  # lexicographic order
    flat = to_flat(paths, K)
    assert flat.dtype == torch.int64
    assert torch.equal(flat, torch.arange(K**D))
    assert torch.equal(from_flat(flat, K, D), paths)
    np_flat = to_flat(paths.numpy().astype(np.int32), K)
    assert np_flat.dtype == np.int64 and np.array_equal(np_flat, np.arange(K**D))
    assert np.array_equal(from_flat(np_flat, K, D), paths.numpy())
    # any leading shape, and large ids stay exact in int64
    big = torch.tensor([[[999, 0, 999, 1]]])
    assert torch.equal(from_flat(to_flat(big, 1000), 1000, 4), big)


def test_layer_input_widths_and_distinct_node_tables():
    m = make(K=4, D=3, e=5, hidden=(7, 6))
    assert [lin.in_features for lin in m.first] == [5, 10, 15]
    assert len(m.node_emb) == 2
    assert m.node_emb[0].weight is not m.node_emb[1].weight
    assert not torch.equal(m.node_emb[0].weight, m.node_emb[1].weight)
    # each layer is an MLP: Linear, ReLU, Linear, ReLU, Linear -> K
    assert m.rest[0][-1].out_features == 4 and len(m.rest[0]) == 4


def test_probabilities_over_all_paths_sum_to_one():
    for K, D, hidden in [(3, 1, (4,)), (4, 2, ()), (3, 3, (6, 5))]:
        m = make(K=K, D=D, hidden=hidden)
        u = torch.randn(2, 5, dtype=torch.double)
        paths = all_paths(K, D).unsqueeze(0).expand(2, -1, -1)  # (2, K^D, D)
        p = m.path_logprob(u, paths).exp().sum(1)
        torch.testing.assert_close(p, torch.ones(2, dtype=torch.double))


def test_path_logprob_is_sum_of_layer_logprobs():
    m = make()
    u = torch.randn(3, 5, dtype=torch.double)
    paths = torch.randint(0, 4, (3, 2, 3))
    got = m.path_logprob(u, paths)
    for i, j in itertools.product(range(3), range(2)):
        c = paths[i, j]
        want = sum(m.layer_logprobs(u[i : i + 1], c[None, :d])[0, c[d]] for d in range(3))
        torch.testing.assert_close(got[i, j], want)


def test_path_logprob_per_user_rows_and_gradients_equal_the_direct_computation():
    """``users`` indexes u per set of paths; the per-user shares and the prefix tables give the
    direct per-path computation's values and gradients."""
    m = make()
    u = torch.randn(3, 5, dtype=torch.double, requires_grad=True)
    users = torch.tensor([2, 0, 0, 1, 2])
    paths = torch.randint(0, 4, (5, 2, 3))
    got = m.path_logprob(u, paths, users=users)  # (5, 2)
    torch.testing.assert_close(got, m.path_logprob(u[users], paths))
    want = torch.stack([torch.stack([
        sum(m.layer_logprobs(u[users[i]][None], paths[i, j, None, :d])[0, paths[i, j, d]] for d in range(3))
        for j in range(2)]) for i in range(5)])  # (5, 2), one layer at a time
    weights = torch.randn(5, 2, dtype=torch.double)
    params = [u, *m.parameters()]
    g_got = torch.autograd.grad((got * weights).sum(), params)
    g_want = torch.autograd.grad((want * weights).sum(), params)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b)


def test_multipath_loss_equals_direct_computation():
    m = make()
    batch, J, K, D = 4, 3, 4, 3
    u = torch.randn(batch, 5, dtype=torch.double)
    paths = torch.randint(0, K, (batch, J, D))
    total = 0.0
    for i in range(batch):
        s = 0.0
        for j in range(J):
            p = 1.0
            for d in range(D):
                probs = m.layer_logprobs(u[i : i + 1], paths[i, j, None, :d]).exp()[0]
                p = p * probs[paths[i, j, d]]
            s = s + p
        total = total - torch.log(s)
    torch.testing.assert_close(m.multipath_loss(u, paths), total / batch)


def test_prefix_tables_reproduce_the_first_linear():
    m = make(K=4, D=3, e=5, hidden=(7,))
    u = torch.randn(6, 5, dtype=torch.double)
    prefix = torch.randint(0, 4, (6, 2))
    tables = m.prefix_tables()
    assert [t.shape for t in tables] == [(0, 7), (4, 7), (8, 7)]
    pre = m.user_part(2, u) + m.prefix_part(tables[2], prefix)
    torch.testing.assert_close(m.head_logprobs(2, pre), m.layer_logprobs(u, prefix))


def test_gradients_reach_every_parameter_group():
    V, K, D = 20, 3, 3
    torch.manual_seed(0)
    enc = UserEncoder(V, EncoderConfig(kind="gru", e=6, item_dim=5))
    struct = StructureModel(StructureConfig(K=K, D=D, J=2, hidden=(8,)), 6)
    rr = Reranker(V, 6, RerankerConfig(negatives=5), np.arange(V))
    hist = torch.tensor([[1, 2, 3], [4, -1, -1], [5, 6, -1]])
    lengths = torch.tensor([3, 1, 2])
    u = enc(hist, lengths)
    paths = torch.randint(0, K, (3, 2, D))
    loss = struct.multipath_loss(u, paths) + rr.sampled_softmax_loss(u, torch.tensor([7, 8, 9]))
    loss.backward()
    for mod in (enc, struct, rr):
        for name, p in mod.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # every layer's node table got its own gradient
    assert all(t.weight.grad.abs().sum() > 0 for t in struct.node_emb)
    assert enc.item_emb.weight.grad[V].abs().sum() == 0  # the padding row stays zero


def test_multi_target_multipath_loss_equals_direct_computation():
    m = make()
    batch, T, J, K, D = 4, 3, 2, 4, 3
    u = torch.randn(batch, 5, dtype=torch.double)
    paths = torch.randint(0, K, (batch, T, J, D))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    users = []
    for i in range(batch):
        per = [-torch.logsumexp(m.path_logprob(u[i : i + 1], paths[i, t][None])[0], 0)
               for t in range(T) if mask[i, t]]
        if per:
            users.append(torch.stack(per).mean())
    torch.testing.assert_close(m.multipath_loss_multi(u, paths, mask), torch.stack(users).mean())


def test_multi_target_multipath_loss_with_one_target_is_the_old_loss():
    m = make()
    u = torch.randn(5, 5, dtype=torch.double)
    paths = torch.randint(0, 4, (5, 3, 3))
    mask = torch.ones(5, 1, dtype=torch.bool)
    torch.testing.assert_close(m.multipath_loss_multi(u, paths[:, None], mask), m.multipath_loss(u, paths))
    # padding targets change nothing, whatever paths they hold
    padded = torch.cat([paths[:, None], torch.randint(0, 4, (5, 2, 3, 3))], dim=1)
    mask3 = torch.tensor([[True, False, False]] * 5)
    torch.testing.assert_close(m.multipath_loss_multi(u, padded, mask3), m.multipath_loss(u, paths))
