import numpy as np
import pytest
import torch

from deep_retrieval.paths import PathIndex, path_stats, random_assignment


@pytest.mark.parametrize("V,J,n_paths", [(5000, 3, 50), (2000, 5, 8), (300, 4, 4), (100, 1, 1)])
def test_random_assignment_distinct_in_range(V, J, n_paths):
    a = random_assignment(V, J, n_paths, np.random.default_rng(0))
    assert a.shape == (V, J) and a.dtype == np.int64
    assert a.min() >= 0 and a.max() < n_paths
    s = np.sort(a, axis=1)
    assert not (s[:, 1:] == s[:, :-1]).any()


def test_random_assignment_rejects_too_many_paths():
    with pytest.raises(ValueError):
        random_assignment(3, 5, 4, np.random.default_rng(0))


def test_random_assignment_roughly_uniform():
    a = random_assignment(20000, 3, 10, np.random.default_rng(1))
    counts = np.bincount(a.ravel(), minlength=10)
    assert counts.min() > 0.9 * 6000 and counts.max() < 1.1 * 6000


def _reference_candidates(assignment, flat):
    by_path = {}
    for v, row in enumerate(assignment):
        for c in row:
            if c >= 0:
                by_path.setdefault(int(c), set()).add(v)
    return [sorted(set().union(*[by_path.get(int(c), set()) for c in row])) for row in flat]


def test_candidates_equals_set_union():
    rng = np.random.default_rng(2)
    assignment = random_assignment(300, 3, 100, rng)
    assignment[5, 1] = -1  # ignored
    index = PathIndex(assignment)
    flat = rng.integers(-1, 120, size=(40, 7))  # includes -1, empty and absent paths
    flat[3] = flat[3, 0]  # the same path repeated
    got = index.candidates(flat)
    assert got.to_lists() == _reference_candidates(assignment, flat)
    assert index.candidates(torch.from_numpy(flat)).to_lists() == got.to_lists()


def test_candidates_empty_index_and_sizes():
    index = PathIndex(np.full((3, 2), -1))
    r = index.candidates(np.array([[1, 2]]))
    assert len(r) == 1 and len(r.values) == 0
    index = PathIndex(np.array([[7, 3], [3, 9]]))
    ids, counts = index.sizes()
    assert ids.tolist() == [3, 7, 9] and counts.tolist() == [2, 1, 1]
    assert index.items_of(3).tolist() == [0, 1] and index.items_of(4).tolist() == []


def test_path_stats_hand_case():
    # path 0: 1 item, path 1: 2 items, path 2: 5 items; n_paths = 10
    a = np.array([[0, 1], [1, 2], [2, 5], [2, 5], [2, 5], [2, -1]])
    # sizes: 0->1, 1->2, 2->5, 5->3
    st = path_stats(a, 10)
    assert st["non_empty"] == 4 and st["empty"] == 6 and st["largest"] == 5
    assert st["mean"] == pytest.approx(11 / 4) and st["median"] == 2.5
    assert st["p99"] == pytest.approx(np.percentile([1, 2, 3, 5], 99))
    assert st["hist_lo"] == [1, 2, 4] and st["hist_counts"] == [1, 2, 1]
    empty = path_stats(np.full((2, 2), -1), 4)
    assert empty["non_empty"] == 0 and empty["hist_counts"] == []
