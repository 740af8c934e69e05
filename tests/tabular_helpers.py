"""Comparison helpers shared by the estimator-vs-exact tests."""

import torch
from torch.nn import functional as F  # noqa: N812


def compare(est, exact):
    """(cosine, relative error) of an estimate against the exact value."""
    cos = F.cosine_similarity(est.reshape(-1), exact.reshape(-1), dim=0).item()
    return cos, ((est - exact).norm() / exact.norm()).item()


def assert_matches(est, exact, cos_min=0.99, rel_max=0.05):
    cos, rel = compare(est, exact)
    assert cos >= cos_min and rel <= rel_max, f"cosine {cos:.4f}, relative error {rel:.4f}"


def gen(seed):
    return torch.Generator().manual_seed(seed)
