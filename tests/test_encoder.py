"""User encoder: padding-invariant, order-aware (GRU), empty histories allowed."""

import numpy as np
import pytest
import torch

from deep_retrieval.config import EncoderConfig
from deep_retrieval.data.dataset import pad_histories
from deep_retrieval.encoder import UserEncoder

V = 30


def make(kind, seed=0):
    torch.manual_seed(seed)
    return UserEncoder(V, EncoderConfig(kind=kind, e=8, item_dim=6))


@pytest.mark.parametrize("kind", ["gru", "mean"])
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


@pytest.mark.parametrize("kind", ["gru", "mean"])
def test_empty_histories(kind):
    enc = make(kind)
    values = np.array([4, 5, 6], dtype=np.int64)
    hist, lengths = pad_histories(values, np.array([0, 0, 3]), np.array([0, 3, 3]), 69)
    assert lengths.tolist() == [0, 3, 0]
    out = enc(torch.from_numpy(hist), torch.from_numpy(lengths))
    assert out.shape == (3, 8) and torch.isfinite(out).all()
    empty = torch.zeros(8) if kind == "gru" else enc.proj.bias  # documented choice
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
