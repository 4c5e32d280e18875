"""The global sample order: a keyed permutation per epoch, identical for every data-parallel size."""

import numpy as np
import pytest

from bigtrain.data.order import GlobalOrder, Permutation, rank_positions


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1000, 4097])
def test_permutation_is_a_bijection(n):
    out = Permutation(n, key=42)(np.arange(n))
    assert sorted(out.tolist()) == list(range(n))


def test_permutation_depends_on_key_and_shuffles():
    a = Permutation(1000, key=1)(np.arange(1000))
    b = Permutation(1000, key=2)(np.arange(1000))
    assert not np.array_equal(a, b)
    assert (a == np.arange(1000)).mean() < 0.05  # not the identity


def test_epochs_are_fresh_shuffles_covering_every_sample():
    order = GlobalOrder(num_samples=50, seed=3)
    e0, e1 = order.samples(np.arange(50)), order.samples(np.arange(50, 100))
    assert sorted(e0.tolist()) == sorted(e1.tolist()) == list(range(50))
    assert not np.array_equal(e0, e1)


@pytest.mark.parametrize("dp_size", [1, 2, 4, 8])
def test_steps_see_the_same_samples_for_any_data_parallel_size(dp_size):
    order, global_batch, micro = GlobalOrder(101, seed=0), 16, 2
    for step in range(5):
        seen = []
        for rank in range(dp_size):
            for m in range(global_batch // (micro * dp_size)):
                seen.extend(rank_positions(0, step, m, global_batch=global_batch, micro_batch=micro,
                                           dp_rank=rank, dp_size=dp_size).tolist())
        assert seen == list(range(step * global_batch, (step + 1) * global_batch))
    assert order.samples(np.arange(16)).tolist() == GlobalOrder(101, seed=0).samples(np.arange(16)).tolist()


def test_resume_position_is_an_offset():
    kwargs = dict(global_batch=8, micro_batch=2, dp_rank=1, dp_size=2)
    resumed = rank_positions(24, 0, 1, **kwargs)
    uninterrupted = rank_positions(0, 3, 1, **kwargs)
    assert resumed.tolist() == uninterrupted.tolist()
