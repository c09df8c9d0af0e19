"""benchmarks/toy_kl_parity_features.py's two measures, on features whose answer is known by construction."""

import importlib.util
import itertools
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location(
    "parity_features", Path(__file__).resolve().parents[1] / "benchmarks" / "toy_kl_parity_features.py")
pf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pf)

BITS = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)))  # rows in itertools.product order
CHI = (-1.0) ** BITS.sum(1)


def test_a_feature_that_ignores_one_bit_is_uncorrelated_with_the_parity_and_flagged():
    torch.manual_seed(0)
    w = torch.randn(3, 8)
    deaf = torch.tanh(3 * BITS[:, [0, 1, 3]] @ w)  # curved, but never reads bit 3 (index 2)
    hearing = torch.tanh(3 * BITS @ torch.randn(4, 8))
    assert pf.max_abs_corr(deaf, CHI) < 1e-6
    assert pf.least_read_bit(deaf) < 1e-6
    assert pf.least_read_bit(hearing) > 0.05
    assert pf.max_abs_corr(torch.cat([deaf, CHI[:, None]], 1), CHI) > 0.999
