"""A tiny model trained on the CPU by today's code equals the one the code before the device
option, the training-state refactor and the new losses trained (tests/golden/tiny_cpu.json,
written at commit a33365b): the default code path did not change."""

import json
from pathlib import Path

import numpy as np
import pytest

from deep_retrieval.model import DeepRetrieval
from tests.test_contract import synthetic_dataset
from tests.test_model import tiny_config

GOLDEN = json.loads((Path(__file__).parent / "golden" / "tiny_cpu.json").read_text())


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_tiny_cpu_model_matches_the_golden_run(name):
    want = GOLDEN[name]
    model = DeepRetrieval(tiny_config(train__device="cpu", **want["over"])).fit(
        synthetic_dataset(seed=3), log=lambda _: None)
    np.testing.assert_allclose([e["Q_str"] for e in model.log], want["Q_str"], rtol=1e-5)
    got_sm = [e["Q_softmax"] for e in model.log]
    assert [x is None for x in got_sm] == [x is None for x in want["Q_softmax"]]
    np.testing.assert_allclose([x for x in got_sm if x is not None],
                               [x for x in want["Q_softmax"] if x is not None], rtol=1e-5)
    sums = {k: float(v.double().sum()) for k, v in model.net.state_dict().items() if v.is_floating_point()}
    assert sums.keys() == want["sums"].keys()
    for k, v in want["sums"].items():
        assert sums[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    # the M-step is exact arithmetic on these scores: the assignment is the same (a float
    # difference in the last bit on another CPU could flip a tie, hence not all rows)
    same = (model.assignment == np.asarray(want["assignment"])).all(axis=1).mean()
    assert same >= 0.95
