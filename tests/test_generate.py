"""``bigtrain generate``'s sampler: temperature, top-k, top-p and seed (the model side is in test_convert.py)."""

from __future__ import annotations

import pytest
import torch

from bigtrain.errors import UserError
from bigtrain.generate import Sampling, filtered_logits, next_token

LOGITS = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03]))


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits).nonzero().flatten().tolist()


def test_top_k_and_top_p_keep_exactly_the_expected_tokens():
    assert kept(filtered_logits(LOGITS, top_k=2, top_p=1.0)) == [0, 1]
    assert kept(filtered_logits(LOGITS, top_k=0, top_p=0.7)) == [0, 1]  # 0.5 < 0.7 <= 0.75
    assert kept(filtered_logits(LOGITS, top_k=0, top_p=0.75)) == [0, 1]  # reaching p is enough
    assert kept(filtered_logits(LOGITS, top_k=0, top_p=0.76)) == [0, 1, 2]
    assert kept(filtered_logits(LOGITS, top_k=0, top_p=0.1)) == [0]  # the most likely token always stays
    assert kept(filtered_logits(LOGITS, top_k=4, top_p=0.95)) == [0, 1, 2, 3]


def test_samples_follow_the_renormalised_distribution_and_the_seed():
    draws = 20_000
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([next_token(LOGITS, Sampling(1.0, top_k=3), generator)
                                          for _ in range(draws)]), minlength=5)
    expected = torch.tensor([0.5, 0.25, 0.15, 0, 0]) / 0.9
    assert (counts / draws - expected).abs().max() < 0.015  # ~4 standard deviations at 20k draws
    assert next_token(LOGITS, Sampling(0.0), generator) == 0  # temperature 0 = greedy
    cold = torch.Generator().manual_seed(1)
    assert {next_token(LOGITS, Sampling(0.01), cold) for _ in range(200)} == {0}  # a low temperature ~ argmax
    first = [next_token(LOGITS, Sampling(1.0), torch.Generator().manual_seed(7)) for _ in range(3)]
    assert len(set(first)) == 1  # the same seed, the same draw


@pytest.mark.parametrize("sampling, key", [(Sampling(-1.0), "--temperature"), (Sampling(1.0, top_k=-2), "--top-k"),
                                           (Sampling(1.0, top_p=0.0), "--top-p"), (Sampling(1.0, top_p=1.5), "--top-p")])
def test_bad_sampling_options_name_the_flag(sampling, key):
    with pytest.raises(UserError, match=key):
        sampling.check()
