"""Mixing: weight-proportional blocks, each source its own epochs, O(1) and resumable like one source."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bigtrain.config.load import ConfigError
from bigtrain.data.loader import StreamSpec, TrainLoader
from bigtrain.data.mixing import Mixture, apportion
from bigtrain.data.sources import check_mixture

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import ids_source  # noqa: E402

BASES = (0, 10_000, 20_000)  # sample ids of source s are BASES[s] + index


def test_apportion_is_exact_when_representable_and_within_one_otherwise():
    assert apportion([0.7, 0.2, 0.1], 1000) == [700, 200, 100]
    assert apportion([1, 1, 1], 1000) == [334, 333, 333]  # largest remainder, ties to the earlier source
    assert apportion([3, 1], 10) == [8, 2]  # 7.5 / 2.5: the tie goes to source 0
    for weights in ([0.123, 0.456, 0.421], [5, 1e-3, 7], [1] * 7):
        counts = apportion(weights, 1000)
        assert sum(counts) == 1000
        assert all(abs(c - 1000 * w / sum(weights)) < 1 for c, w in zip(counts, weights))


@pytest.mark.parametrize("weights", [[0.7, 0.2, 0.1], [1, 1, 1]])
def test_proportions_over_a_long_stream(weights):
    """Any prefix of P positions holds, per source, within one block of P * share (tolerance: B = 1000)."""
    mix, block = Mixture(weights, 1000, seed=5), 1000
    share = np.array(weights) / sum(weights)
    source, own = mix.locate(np.arange(200_000))
    counts = np.bincount(source, minlength=3)
    assert np.all(np.abs(counts / 200_000 - share) < 1 / block)
    for prefix in (1, 999, 1000, 1234, 77_777, 200_000):
        got = np.bincount(source[:prefix], minlength=3)
        assert np.all(np.abs(got - prefix * share) <= block), (prefix, got)
        assert got.tolist() == mix.consumed(prefix).tolist()  # the O(1) count the metrics use
    for s in range(3):  # every source position is used exactly once, in blocks of c_s
        assert sorted(own[source == s].tolist()) == list(range(int(counts[s])))


def test_interleaving_is_seeded_and_shuffled():
    a, _ = Mixture([1, 1], 100, seed=1).locate(np.arange(1000))
    b, _ = Mixture([1, 1], 100, seed=1).locate(np.arange(1000))
    c, _ = Mixture([1, 1], 100, seed=2).locate(np.arange(1000))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.3 < np.mean(a[1:] != a[:-1]) < 0.7  # not sorted by source inside a block
    one, own = Mixture([3.0], 100, seed=1).locate(np.arange(1000))
    assert not one.any() and np.array_equal(own, np.arange(1000))  # one source: the identity


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    sizes, weights = (40, 200, 90), (0.5, 0.3, 0.2)
    return [ids_source(root / f"s{i}", n, base=BASES[i], weight=w) for i, (n, w) in enumerate(zip(sizes, weights))]


def read_steps(sources, spec: StreamSpec, steps: int, state=None, workers=0):
    loader = TrainLoader(sources, spec, num_workers=workers, state=state)
    ids = [np.concatenate([t[:, 0].numpy() for t in loader.next_step()]).astype(np.int64) for _ in range(steps)]
    return ids, loader


def test_loader_mixes_resumes_and_counts(sources):
    spec = lambda rank, dp, block=50: StreamSpec(10, 5, rank, dp, 3, mix_block_size=block)  # noqa: E731
    full, loader = read_steps(sources, spec(0, 1), 40)
    flat = np.concatenate(full)
    source = np.searchsorted(np.array(BASES), flat, side="right") - 1
    counts = np.bincount(source, minlength=3)
    assert counts.tolist() == [200, 120, 80] == loader.source_samples().tolist()  # 400 positions = 8 blocks of 25/15/10
    assert loader.epochs() == [200 / 40, 120 / 200, 80 / 90]  # the 40-sample source is on its 6th pass
    small = flat[source == 0] - BASES[0]
    assert np.bincount(small, minlength=40).tolist() == [5] * 40  # 5 whole passes, each sample once per pass
    # resume at step 13 with two ranks and workers: the same global sequence
    _, half = read_steps(sources, spec(0, 1), 13)
    state = json.loads(json.dumps(half.state_dict()))
    ranks = [read_steps(sources, spec(r, 2), 27, state=state, workers=r)[0] for r in range(2)]
    resumed = [np.concatenate([ranks[0][s], ranks[1][s]]) for s in range(27)]
    assert all(np.array_equal(a, b) for a, b in zip(resumed, full[13:]))
    with pytest.raises(Exception, match=r"data\.mix_block_size was 50, now 60"):
        TrainLoader(sources, spec(0, 1, 60), state=state)


def test_a_weight_too_small_for_the_block_is_a_config_error(sources):
    tiny = [sources[0], type(sources[1])(sources[1].name, sources[1].path, 1e-5, sources[1].manifest)]
    with pytest.raises(ConfigError, match=r"weight 1e-05 of 's1' is too small to get one of the 1000 positions"):
        check_mixture(tiny, 1000)
    check_mixture(tiny, 200_000)
