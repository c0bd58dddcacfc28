"""User encoder: padding-invariant, order-aware (GRU, SASRec), empty histories allowed, item dropout."""

import numpy as np
import pytest
import torch

from deep_retrieval.config import EncoderConfig
from deep_retrieval.data.dataset import pad_histories
from deep_retrieval.encoder import UserEncoder, drop_items

V = 30


def make(kind, seed=0, **kw):
    torch.manual_seed(seed)
    return UserEncoder(V, EncoderConfig(kind=kind, e=8, item_dim=6, **kw)).eval()


@pytest.mark.parametrize("kind", ["gru", "mean", "sasrec"])
def test_extra_padding_does_not_change_the_output(kind):
    enc = make(kind)
    hist = torch.tensor([[3, 7, 1, -1], [5, -1, -1, -1]])
    lengths = torch.tensor([3, 1])
    wide = torch.cat([hist, torch.full((2, 5), -1)], dim=1)
    out = enc(hist, lengths)
    assert out.shape == (2, 8)
    torch.testing.assert_close(enc(wide, lengths), out)
    # a row alone equals the same row inside a batch padded to a longer neighbour
    torch.testing.assert_close(enc(hist[1:, :1], lengths[1:]), out[1:])


def test_gru_depends_on_order_and_mean_does_not():
    hist = torch.tensor([[3, 7, 1], [1, 7, 3]])
    lengths = torch.tensor([3, 3])
    g = make("gru")(hist, lengths)
    assert not torch.allclose(g[0], g[1])
    m = make("mean")(hist, lengths)
    torch.testing.assert_close(m[0], m[1])


def test_mean_is_the_masked_mean_through_the_linear():
    enc = make("mean")
    hist = torch.tensor([[3, 7, -1]])
    want = enc.proj(enc.item_emb.weight[[3, 7]].mean(0, keepdim=True))
    torch.testing.assert_close(enc(hist, torch.tensor([2])), want)


@pytest.mark.parametrize("kind", ["gru", "mean", "sasrec"])
def test_empty_histories(kind):
    enc = make(kind)
    values = np.array([4, 5, 6], dtype=np.int64)
    hist, lengths = pad_histories(values, np.array([0, 0, 3]), np.array([0, 3, 3]), 69)
    assert lengths.tolist() == [0, 3, 0]
    out = enc(torch.from_numpy(hist), torch.from_numpy(lengths))
    assert out.shape == (3, 8) and torch.isfinite(out).all()
    empty = enc.proj.bias if kind == "mean" else torch.zeros(8)  # documented choice
    torch.testing.assert_close(out[0], empty)
    torch.testing.assert_close(out[2], empty)
    # all-empty batch (pad_histories gives width 1)
    hist0, len0 = pad_histories(values, np.array([0]), np.array([0]), 69)
    torch.testing.assert_close(enc(torch.from_numpy(hist0), torch.from_numpy(len0))[0], empty)


def test_gru_output_is_the_state_after_the_last_item():
    enc = make("gru")
    hist = torch.tensor([[3, 7, 1, -1]])
    x = enc.item_emb(torch.tensor([[3, 7, 1]]))
    _, h = enc.gru(x)
    torch.testing.assert_close(enc(hist, torch.tensor([3]))[0], h[0, 0])


def test_padding_row_is_zero_and_unknown_kind_rejected():
    enc = make("gru")
    assert enc.item_emb.weight.shape == (V + 1, 6)
    assert enc.item_emb.padding_idx == V and enc.item_emb.weight[V].abs().sum() == 0
    with pytest.raises(ValueError):
        UserEncoder(V, EncoderConfig(kind="lstm"))


def test_sasrec_is_causal_and_order_aware():
    enc = make("sasrec", heads=2)
    hist = torch.tensor([[3, 7, 1, 4], [3, 7, 1, 9]])  # differ in the last item only
    x = enc.item_emb(hist)
    lengths = torch.tensor([4, 4])
    out = enc._attend(x, lengths)  # (2, 4, 6)
    torch.testing.assert_close(out[0, :3], out[1, :3])  # earlier positions do not see the change
    assert not torch.allclose(out[0, 3], out[1, 3])
    swapped = enc(torch.tensor([[7, 3, 1]]), torch.tensor([3]))
    assert not torch.allclose(swapped, enc(torch.tensor([[3, 7, 1]]), torch.tensor([3])))


def test_sasrec_output_is_the_projected_last_valid_position():
    enc = make("sasrec")
    hist = torch.tensor([[3, 7, 1, -1, -1]])
    out = enc._attend(enc.item_emb(torch.tensor([[3, 7, 1]])), torch.tensor([3]))
    torch.testing.assert_close(enc(hist, torch.tensor([3]))[0], enc.proj(out[0, 2]))


def test_drop_items_keeps_order_and_only_drops():
    torch.manual_seed(1)
    hist = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, -1, -1, -1, -1, -1, -1]])
    lengths = torch.tensor([8, 2])
    out, n = drop_items(hist, lengths, 0.5)
    for row, src, k in zip(out.tolist(), hist.tolist(), n.tolist(), strict=True):
        kept = row[:k]
        assert all(v == -1 for v in row[k:])
        assert kept == [v for v in src if v in kept]  # a subsequence, order kept
    same, n0 = drop_items(hist, lengths, 0.0)
    assert torch.equal(same, hist) and torch.equal(n0, lengths)
    # the drop rate is p on average
    big = torch.arange(20000).view(100, 200)
    _, kept = drop_items(big, torch.full((100,), 200), 0.3)
    assert abs(kept.sum().item() / 20000 - 0.7) < 0.02


@pytest.mark.parametrize("kind", ["gru", "mean", "sasrec"])
def test_dropout_acts_at_training_time_only(kind):
    enc = make(kind, dropout=0.5)
    hist = torch.arange(20).view(2, 10)
    lengths = torch.tensor([10, 10])
    plain = make(kind)
    torch.testing.assert_close(enc(hist, lengths), plain(hist, lengths))  # eval: nothing dropped
    enc.train()
    torch.manual_seed(0)
    a = enc(hist, lengths)
    torch.manual_seed(0)
    kept, n = drop_items(hist, lengths, 0.5)
    torch.testing.assert_close(a, plain(kept, n))  # train: the encoder of the kept items
    assert not torch.allclose(a, plain(hist, lengths))
